"""Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

A checkpoint is the note text `<origin>\\n<tree size>\\n<base64 root hash>\\n`, then a blank line, then
one line per signature: `— <key name> base64(key ID || signature)`. ztmesh signs each checkpoint twice:
Ed25519 (signature type 0x01, so Go's `sumdb/note` and every standard witness verify it) and ML-DSA-65
(type 0xff followed by the identifier `mldsa65`, which the spec reserves for types it does not assign;
standard verifiers ignore a signature whose key they do not know, as the spec requires).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
ED25519_TYPE = b"\x01"
MLDSA65_TYPE = b"\xff" + b"mldsa65"
MAX_SIGNATURES = 16


class NoteError(ValueError):
    """A note or checkpoint is malformed, or no trusted signature on it verifies."""


def key_id(name: str, signature_type: bytes, public_key: bytes) -> bytes:
    """key ID = SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + signature_type + public_key).digest()[:4]


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"invalid note key name {name!r}: non-empty, no spaces, no '+'")


class NoteSigner(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, text: bytes) -> bytes: ...


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted public key: its name, ID, and how to check a signature made with it."""

    name: str
    key_id: bytes
    algorithm: str  # "ed25519" | "ml-dsa-65"
    public_key: bytes

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            if self.algorithm == "ed25519":
                ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
            else:
                mldsa.MLDSA65PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except (InvalidSignature, ValueError):
            return False
        return True

    def vkey(self) -> str:
        """The verifier key string of Go's note.NewVerifier (Ed25519 only): name+hex(id)+base64(type||key)."""
        if self.algorithm != "ed25519":
            raise NoteError("only Ed25519 verifier keys have a standard text form")
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(ED25519_TYPE + self.public_key).decode()}"


def ed25519_verifier(name: str, public_key: bytes) -> NoteVerifier:
    _check_key_name(name)
    return NoteVerifier(name, key_id(name, ED25519_TYPE, public_key), "ed25519", public_key)


def mldsa65_verifier(name: str, public_key: bytes) -> NoteVerifier:
    _check_key_name(name)
    return NoteVerifier(name, key_id(name, MLDSA65_TYPE, public_key), "ml-dsa-65", public_key)


def parse_vkey(vkey: str) -> NoteVerifier:
    """Read a `name+hash+base64(0x01||key)` Ed25519 verifier key (the form witnesses and Go tools use)."""
    try:
        name, hash_hex, encoded = vkey.strip().split("+", 2)  # base64 itself may hold a "+"
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError(f"malformed verifier key {vkey!r}: want name+hash+base64") from None
    if raw[:1] != ED25519_TYPE or len(raw) != 33:
        raise NoteError(f"verifier key {name!r} is not an Ed25519 key")
    verifier = ed25519_verifier(name, raw[1:])
    if verifier.key_id.hex() != hash_hex:
        raise NoteError(f"verifier key {name!r}: hash {hash_hex} does not match the key")
    return verifier


def sign(text: str, signers: Sequence[NoteSigner]) -> str:
    """A signed note: `text` (ending in a newline), a blank line, one signature line per signer."""
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    body = text.encode()
    lines = []
    for signer in signers:
        signature = signer.sign(body)  # first: a remote key may have rotated, which changes its key ID
        lines.append(f"{SIGNATURE_PREFIX}{signer.name} {base64.b64encode(signer.key_id + signature).decode()}\n")
    return text + "\n" + "".join(lines)


@dataclass(frozen=True)
class OpenedNote:
    text: str
    verified_by: tuple[str, ...]  # algorithm names of the trusted signatures that verified
    unknown_signatures: int


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> OpenedNote:
    """Check a signed note against trusted keys, as the spec says: a known key's signature that fails
    rejects the note; no verified signature from a known key rejects it; unknown keys are ignored."""
    text, sep, signature_block = note.rpartition("\n\n")
    if sep and not signature_block:
        raise NoteError("signed note has no signature lines")
    if not sep or not signature_block.endswith("\n"):
        raise NoteError("not a signed note: no blank line before the signatures")
    text += "\n"
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("signed note contains control characters")
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[str] = []
    unknown = 0
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"signed note has {len(lines)} signatures (at most {MAX_SIGNATURES} accepted)")
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"signature by {name!r} is not base64") from None
        if len(raw) < 5:
            raise NoteError(f"signature by {name!r} is too short")
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            unknown += 1
            continue
        if not verifier.verify(text.encode(), raw[4:]):
            raise NoteError(f"the {verifier.algorithm} signature by {name!r} does not verify")
        verified.append(verifier.algorithm)
    if not verified:
        raise NoteError("no signature by a trusted key on this note")
    return OpenedNote(text, tuple(verified), unknown)


# --- tlog-checkpoint body -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeHead:
    """What a checkpoint states: the log's origin, its size and its root hash."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise NoteError(f"invalid checkpoint origin {self.origin!r}")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"


def parse_tree_head(text: str) -> TreeHead:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("checkpoint text must be origin, size, root hash lines ending in a newline")
    origin, size_text, root_text, *extensions = lines[:-1]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError(f"checkpoint size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise NoteError("checkpoint root hash is not base64") from None
    if len(root) != 32:
        raise NoteError(f"checkpoint root hash has {len(root)} bytes, not 32")
    return TreeHead(origin, int(size_text), root, tuple(extensions))


# --- signers holding their private key in process ------------------------------------------------------------


class LocalNoteSigner:
    """Signs notes with an Ed25519 or ML-DSA-65 private key held in this process."""

    def __init__(self, name: str, private_key: ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey) -> None:
        _check_key_name(name)
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes_raw()
        make = ed25519_verifier if isinstance(private_key, ed25519.Ed25519PrivateKey) else mldsa65_verifier
        self.verifier = make(name, self.public_key)

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def sign(self, text: bytes) -> bytes:
        return self._key.sign(text)

    def verifiers(self) -> list[NoteVerifier]:
        return [self.verifier]
