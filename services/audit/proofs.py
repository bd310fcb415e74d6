"""Inclusion and consistency proofs as documents: what the audit service hands out, what
`ztmesh audit prove` and `ztmesh audit consistency` print, and how anyone checks them.

The JSON forms are specified in docs/audit-record.md ("Proofs"); hashes are standard base64, like the
root hash in a checkpoint note, so a verifier needs nothing from ztmesh but SHA-256 and Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ztmesh.audit import merkle, note

INCLUSION_TYPE = "ztmesh.audit.inclusion.v1"
CONSISTENCY_TYPE = "ztmesh.audit.consistency.v1"


class ProofDocumentError(ValueError):
    """A proof document is malformed or does not prove what it claims."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, field: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except binascii.Error:
        raise ProofDocumentError(f"{field} is not base64") from None


@dataclass(frozen=True)
class InclusionProof:
    """Record `sequence` (leaf `sequence - 1`) is in the tree the signed `checkpoint` states."""

    checkpoint: str  # the signed note of the tree the proof is against
    sequence: int
    record: bytes  # the canonical record (RFC 8785), whose leaf hash is SHA-256(0x00 || record)
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        head = note.parse_tree_head(self.checkpoint.split("\n\n")[0] + "\n")
        return {
            "type": INCLUSION_TYPE, "origin": head.origin, "tree_size": head.size, "root_hash": _b64(head.root),
            "sequence": self.sequence, "leaf_index": self.sequence - 1,
            "leaf_hash": _b64(merkle.leaf_hash(self.record)), "record": self.record.decode(),
            "proof": [_b64(h) for h in self.path], "checkpoint": self.checkpoint,
        }  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> InclusionProof:
        if doc.get("type") != INCLUSION_TYPE:
            raise ProofDocumentError(f"not an inclusion proof (type must be {INCLUSION_TYPE})")
        try:
            return cls(str(doc["checkpoint"]), int(doc["sequence"]), str(doc["record"]).encode(),
                       tuple(_unb64(h, "proof") for h in doc["proof"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofDocumentError(f"malformed inclusion proof: {exc}") from None

    def verify(self, verifiers: Sequence[note.NoteVerifier]) -> note.TreeHead:
        """The tree head it proves against, once the note's signature and the path both check out."""
        head = note.parse_tree_head(note.open_note(self.checkpoint, verifiers).text)
        if not merkle.verify_inclusion(
            merkle.leaf_hash(self.record), self.sequence - 1, head.size, self.path, head.root
        ):
            raise ProofDocumentError(f"record {self.sequence} is not in the tree of size {head.size} this proof names")
        return head


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree (`new_size`, `new_root`) extends (`old_size`, `old_root`)."""

    origin: str
    old_size: int
    old_root: bytes
    new_size: int
    new_root: bytes
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": CONSISTENCY_TYPE, "origin": self.origin, "old_size": self.old_size,
            "old_root": _b64(self.old_root), "new_size": self.new_size, "new_root": _b64(self.new_root),
            "proof": [_b64(h) for h in self.path],
        }  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ConsistencyProof:
        if doc.get("type") != CONSISTENCY_TYPE:
            raise ProofDocumentError(f"not a consistency proof (type must be {CONSISTENCY_TYPE})")
        try:
            return cls(str(doc["origin"]), int(doc["old_size"]), _unb64(doc["old_root"], "old_root"),
                       int(doc["new_size"]), _unb64(doc["new_root"], "new_root"),
                       tuple(_unb64(h, "proof") for h in doc["proof"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofDocumentError(f"malformed consistency proof: {exc}") from None

    def holds(self) -> bool:
        return merkle.verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.path)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)
