"""ztmesh's checkpoints and proofs, checked by implementations nobody here wrote: Go's
golang.org/x/mod/sumdb/note (signed notes) and sumdb/tlog, and github.com/transparency-dev/merkle
(RFC 6962/9162 proofs), through tests/audit/tlogverify."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from tests.support.gotools import build_go_program
from tests.support.servers import _start
from ztmesh.audit import merkle, note

ORIGIN = "ztmesh.local/audit"


@pytest.fixture(scope="module")
def tlogverify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = Path(__file__).parent / "tlogverify"
    return _start("Go tlog verifier", lambda: build_go_program(source, tmp_path_factory.mktemp("go")))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(tlogverify: Path, document: dict) -> dict[str, tuple[bool, str]]:
    out = subprocess.run([str(tlogverify)], input=json.dumps(document), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {r["check"]: (r["ok"], r.get("error", "")) for r in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def log() -> tuple[merkle.MemoryNodes, list[bytes], list[str], note.LocalNoteSigner]:
    """A log of 1,000 records with a signed checkpoint at several sizes."""
    ed = note.LocalNoteSigner(ORIGIN, ed25519.Ed25519PrivateKey.generate())
    ml = note.LocalNoteSigner(ORIGIN, mldsa.MLDSA65PrivateKey.generate())
    nodes = merkle.MemoryNodes()
    leaves = [merkle.leaf_hash(f'{{"sequence":{i}}}'.encode()) for i in range(1, 1001)]
    checkpoints = {}
    for size in (1, 2, 3, 7, 8, 64, 511, 512, 513, 1000):
        nodes.append(leaves[nodes.frontier.size : size])
        checkpoints[size] = note.sign(note.TreeHead(ORIGIN, size, nodes.frontier.root()).text(), [ed, ml])
    return nodes, leaves, checkpoints, ed  # type: ignore[return-value]


def test_go_accepts_the_checkpoint_inclusion_and_consistency_proofs(tlogverify: Path, log) -> None:
    nodes, leaves, checkpoints, ed = log
    size = 1000
    indexes = [0, 1, 255, 511, 512, 998, 999]
    document = {
        "verifier_key": ed.verifier.vkey(),
        "checkpoint": checkpoints[size],
        "inclusions": [
            {"index": i, "leaf_hash": b64(leaves[i]), "proof": [b64(p) for p in merkle.inclusion_proof(i, size, nodes)]}
            for i in indexes
        ],
        "consistency": [
            {"old_checkpoint": checkpoints[old], "proof": [b64(p) for p in merkle.consistency_proof(old, size, nodes)]}
            for old in checkpoints
            if old < size
        ],
    }
    results = run(tlogverify, document)
    failed = {name: error for name, (ok, error) in results.items() if not ok}
    assert not failed
    assert len(results) == 1 + 2 * len(indexes) + 2 * (len(checkpoints) - 1)


def test_go_refuses_what_a_rewrite_would_produce(tlogverify: Path, log) -> None:
    nodes, leaves, checkpoints, ed = log
    forged_leaf = merkle.leaf_hash(b'{"sequence":6,"rewritten":true}')
    proof = merkle.inclusion_proof(5, 1000, nodes)
    stranger = note.LocalNoteSigner(ORIGIN, ed25519.Ed25519PrivateKey.generate())
    document = {
        "verifier_key": ed.verifier.vkey(),
        "checkpoint": checkpoints[1000],
        "inclusions": [{"index": 5, "leaf_hash": b64(forged_leaf), "proof": [b64(p) for p in proof]}],
        "consistency": [
            {  # a checkpoint of a different history at size 512, signed by a key Go was not given
                "old_checkpoint": note.sign(note.TreeHead(ORIGIN, 512, bytes(32)).text(), [stranger]),
                "proof": [b64(p) for p in merkle.consistency_proof(512, 1000, nodes)],
            },
            {  # the real older checkpoint with a proof for another size
                "old_checkpoint": checkpoints[511],
                "proof": [b64(p) for p in merkle.consistency_proof(512, 1000, nodes)],
            },
        ],
    }
    results = run(tlogverify, document)
    assert results["note"][0]
    assert not results["merkle inclusion 5"][0] and not results["tlog inclusion 5"][0]
    assert not results["consistency: old checkpoint"][0]
    assert not results["merkle consistency 511 -> 1000"][0] and not results["tlog consistency 511 -> 1000"][0]
