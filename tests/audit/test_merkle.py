"""The Merkle tree (RFC 9162 §2.1) and C2SP signed-note checkpoints, against a direct recursive
definition of MTH and against tampering."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from ztmesh.audit import merkle, note

SIZES = range(0, 70)


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 writes it."""
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


@pytest.fixture(scope="module")
def tree() -> tuple[merkle.MemoryNodes, list[bytes], list[bytes]]:
    nodes = merkle.MemoryNodes()
    leaves = [merkle.leaf_hash(f"record {i}".encode()) for i in range(max(SIZES))]
    roots = [merkle.EMPTY_ROOT]
    for leaf in leaves:
        nodes.append([leaf])
        roots.append(nodes.frontier.root())
    return nodes, leaves, roots


def test_leaf_and_node_hashing_use_the_rfc_prefixes() -> None:
    import hashlib

    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", SIZES)
def test_roots_match_the_rfc_definition(tree, size: int) -> None:
    nodes, leaves, roots = tree
    assert roots[size] == reference_root(leaves[:size]) == merkle.tree_root(size, nodes)
    assert merkle.frontier_from(size, nodes).root() == roots[size]


@pytest.mark.parametrize("size", SIZES)
def test_every_leaf_is_provably_included(tree, size: int) -> None:
    nodes, leaves, roots = tree
    for index in range(size):
        proof = merkle.inclusion_proof(index, size, nodes)
        assert len(proof) <= size.bit_length()
        assert merkle.verify_inclusion(leaves[index], index, size, proof, roots[size])
        assert not merkle.verify_inclusion(leaves[index - 1] if index else b"\0" * 32, index, size, proof, roots[size])
        if proof:
            bent = [bytes(32), *proof[1:]]
            assert not merkle.verify_inclusion(leaves[index], index, size, bent, roots[size])


@pytest.mark.parametrize("size", SIZES)
def test_every_older_tree_is_provably_a_prefix(tree, size: int) -> None:
    nodes, _, roots = tree
    for old in range(size + 1):
        proof = merkle.consistency_proof(old, size, nodes)
        assert merkle.verify_consistency(old, size, roots[old], roots[size], proof)
        if 0 < old < size:
            rewritten = roots[old - 1] if old > 1 else bytes(32)
            assert not merkle.verify_consistency(old, size, rewritten, roots[size], proof)
            assert not merkle.verify_consistency(old, size, roots[old], roots[size], proof[:-1])


def test_proofs_outside_the_tree_are_refused(tree) -> None:
    nodes, _, _ = tree
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(5, 5, nodes)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(6, 5, nodes)
    with pytest.raises(merkle.ProofError, match="is not stored"):
        merkle.inclusion_proof(0, 10_000, nodes)


def test_appending_stores_each_complete_subtree_once() -> None:
    nodes = merkle.MemoryNodes()
    nodes.append(merkle.leaf_hash(bytes([i])) for i in range(8))
    assert sorted(nodes.nodes) == sorted(
        [(0, i) for i in range(8)] + [(1, i) for i in range(4)] + [(2, 0), (2, 1), (3, 0)]
    )
    assert nodes.frontier.nodes == ((3, nodes.nodes[(3, 0)]),)


# --- signed notes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signers() -> tuple[note.LocalNoteSigner, note.LocalNoteSigner]:
    name = "ztmesh.local/audit"
    return (
        note.LocalNoteSigner(name, ed25519.Ed25519PrivateKey.generate()),
        note.LocalNoteSigner(name, mldsa.MLDSA65PrivateKey.generate()),
    )


def test_a_checkpoint_round_trips_with_both_signatures(signers) -> None:
    ed, ml = signers
    head = note.TreeHead("ztmesh.local/audit", 42, bytes(range(32)))
    signed = note.sign(head.text(), signers)
    assert signed.startswith("ztmesh.local/audit\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n\u2014 ")
    opened = note.open_note(signed, [ed.verifier, ml.verifier])
    assert opened.verified_by == ("ed25519", "ml-dsa-65")
    assert note.parse_tree_head(opened.text) == head
    # A standard verifier knows only the Ed25519 key: the ML-DSA line is ignored, not an error.
    assert note.open_note(signed, [ed.verifier]).unknown_signatures == 1


def test_the_verifier_key_text_form_round_trips(signers) -> None:
    ed, _ = signers
    assert note.parse_vkey(ed.verifier.vkey()) == ed.verifier


def tamper_root(signed: str) -> str:
    lines = signed.split("\n")
    lines[2] = "A" + lines[2][1:] if lines[2][0] != "A" else "B" + lines[2][1:]
    return "\n".join(lines)


TAMPERED = [
    ("rewritten root", tamper_root, "does not verify"),
    ("bigger size", lambda s: s.replace("\n42\n", "\n43\n", 1), "does not verify"),
    ("signatures stripped", lambda s: s.split("\n\n")[0] + "\n\n", "no signature lines"),
    ("no blank line", lambda s: s.replace("\n\n", "\n", 1), "no blank line"),
    ("control character", lambda s: s.replace("ztmesh", "zt\x07mesh", 1), "control characters"),
]


@pytest.mark.parametrize(("name", "tamper", "message"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_tampered_checkpoint_is_refused(signers, name, tamper, message) -> None:
    ed, ml = signers
    signed = note.sign(note.TreeHead("ztmesh.local/audit", 42, bytes(32)).text(), signers)
    with pytest.raises(note.NoteError, match=message):
        note.open_note(tamper(signed), [ed.verifier, ml.verifier])


def test_a_note_signed_only_by_unknown_keys_is_refused(signers) -> None:
    stranger = note.LocalNoteSigner("ztmesh.local/audit", ed25519.Ed25519PrivateKey.generate())
    signed = note.sign(note.TreeHead("ztmesh.local/audit", 1, bytes(32)).text(), [stranger])
    with pytest.raises(note.NoteError, match="no signature by a trusted key"):
        note.open_note(signed, [signers[0].verifier])


@pytest.mark.parametrize(
    "text",
    ["origin\n12\n", "origin\n012\nAAAA\n", "origin\nx\n" + "A" * 44 + "\n", "origin\n1\nAAAA\n", "origin\n1\n!!\n"],
)
def test_malformed_checkpoint_bodies_are_refused(text: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_tree_head(text)
