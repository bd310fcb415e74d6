"""Signed policy bundles: OPA's `.signatures.json` (a JWS over the file hashes, EdDSA, which
`opa run --verification-key` checks) plus an ML-DSA-65 signature over the same JWS signing
input, both by keys-service keys; and the policy service's check of both against pinned signers.

The JWS payload is OPA's (`files` with SHA-256 hashes in OPA's canonical form, `iat`, `iss`) plus a
`ztmesh` claim: the bundle revision, the signing time in milliseconds (which orders bundles, so an
older signed bundle cannot be replayed over a newer one) and both public keys. A signer is trusted
when its key id and the SHA-256 fingerprint of its public key are on the operator's list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from ztmesh.policy.errors import BundleError

log = logging.getLogger("ztmesh.policy.bundle_signing")

SIGNATURES_FILE = ".signatures.json"
MANIFEST_FILE = ".manifest"
ISSUER = "ztmesh"
JWS_ALGORITHM = "EdDSA"  # Ed25519; OPA verifies it (jwx) with a PEM "PUBLIC KEY"
PQ_FIELD = "ztmesh_mldsa65"  # beside "signatures" in .signatures.json (OPA ignores other fields)
_STRUCTURED = ("data.json", "data.yaml", "data.yml", MANIFEST_FILE)


# --- OPA's file hashes --------------------------------------------------------------------------


class _Number(str):
    """A JSON number kept as written: OPA hashes numbers by their literal text (json.Number)."""


def _go_json_string(value: str) -> bytes:
    # encoding/json with SetEscapeHTML(false): UTF-8 kept, control characters and U+2028/9 escaped.
    out = ['"']
    for char in value:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out).encode()


def _canonical(value: Any) -> bytes:
    """OPA's structured-document hash input (bundle/hash.go walk): keys sorted, no whitespace."""
    if isinstance(value, dict):
        items = (_go_json_string(k) + b":" + _canonical(v) for k, v in sorted(value.items()))
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_canonical(v) for v in value) + b"]"
    if isinstance(value, _Number):
        return str(value).encode()
    if isinstance(value, str):
        return _go_json_string(value)
    if value is None:
        return b"null"
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return json.dumps(value).encode()  # YAML numbers (ints, floats)


def file_hash(name: str, content: bytes) -> str:
    """The hex SHA-256 OPA expects for the bundle file `name` (structured files hashed canonically)."""
    if Path(name).name not in _STRUCTURED:
        return hashlib.sha256(content).hexdigest()
    try:
        if name.endswith((".yaml", ".yml")):
            import yaml

            value = yaml.safe_load(content)
        else:
            value = json.loads(content, parse_int=_Number, parse_float=_Number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot be hashed, not JSON/YAML: {exc}", name) from None
    return hashlib.sha256(_canonical(value)).hexdigest()


def signed_files(root: Path) -> dict[str, bytes]:
    """Every file of the bundle folder that a signature covers: all visible files (as OPA reads a
    bundle folder) and `.manifest`; hidden entries (a ConfigMap's `..data`) and `.signatures.json`
    are not. Paths are relative with `/`."""
    if not root.is_dir():
        raise BundleError(f"policy folder {root} does not exist or is not a folder")
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if (hidden and rel != MANIFEST_FILE) or not path.is_file():
            continue
        files[rel] = path.read_bytes()
    return files


# --- the signature file -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public_key: bytes) -> str:
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def ed25519_pem(public_key: bytes) -> str:
    """The PEM that `opa run --verification-key` takes for an Ed25519 key."""
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class Signer(Protocol):
    """The keys service, as the signer sees it."""

    def public_key(self, key_id: str) -> tuple[int, bytes]:
        """(primary version, its raw public key)."""
        ...

    def sign(self, key_id: str, message: bytes) -> tuple[bytes, int]:
        """(signature, the version that made it)."""
        ...


@dataclass(frozen=True)
class SigningKeys:
    classical: str  # an Ed25519 key id (the JWS OPA verifies)
    post_quantum: str  # an ML-DSA-65 key id


def write_manifest(root: Path, revision: str) -> dict[str, Any]:
    """Set `.manifest`'s revision (other fields, e.g. roots, are kept)."""
    path = root / MANIFEST_FILE
    manifest: dict[str, Any] = {}
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise BundleError(f"not JSON: {exc}", MANIFEST_FILE) from None
        if not isinstance(manifest, dict):
            raise BundleError("must hold an object", MANIFEST_FILE)
    manifest["revision"] = revision
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def sign_bundle(
    root: Path, revision: str, keys: SigningKeys, signer: Signer, now: float | None = None
) -> dict[str, Any]:
    """Write `.manifest` (revision) and `.signatures.json` for the bundle in `root`; return the claims."""
    write_manifest(root, revision)
    signed_at = time.time() if now is None else now
    files = signed_files(root)
    pq_version, pq_public = signer.public_key(keys.post_quantum)
    ed_version, ed_public = signer.public_key(keys.classical)
    claims: dict[str, Any] = {
        "files": [{"name": name, "hash": file_hash(name, content), "algorithm": "SHA-256"}
                  for name, content in files.items()],
        "iat": int(signed_at),
        "iss": ISSUER,
        "ztmesh": {"revision": revision, "signed_at_ms": int(signed_at * 1000),
                   "mldsa65": {"key_id": keys.post_quantum, "version": pq_version, "public_key": _b64url(pq_public)}},
    }  # fmt: skip
    # The Ed25519 public key rides in the JWS header (OPA ignores extra header fields).
    header = {"alg": JWS_ALGORITHM, "kid": keys.classical, "ztmesh_key_version": ed_version,
              "ztmesh_public_key": _b64url(ed_public)}  # fmt: skip
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    ).encode()
    ed_signature, ed_signed_by = signer.sign(keys.classical, signing_input)
    pq_signature, pq_signed_by = signer.sign(keys.post_quantum, signing_input)
    if (ed_signed_by, pq_signed_by) != (ed_version, pq_version):
        raise BundleError("a signing key was rotated while signing; sign again")
    document = {"signatures": [signing_input.decode() + "." + _b64url(ed_signature)], PQ_FIELD: _b64url(pq_signature)}
    (root / SIGNATURES_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return claims


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedSigner:
    key_id: str
    fingerprint: str  # sha256:<hex> of the raw public key


def parse_trusted_signers(entries: Iterable[str]) -> tuple[TrustedSigner, ...]:
    """`KEY_ID@sha256:HEX` entries (as for plugin signers); ValueError naming the bad one."""
    signers = []
    for entry in entries:
        key_id, sep, pin = entry.strip().partition("@")
        digest = pin.removeprefix("sha256:")
        if not sep or not key_id or not pin.startswith("sha256:") or len(digest) != 64 or not _is_hex(digest):
            raise ValueError(f"{entry!r} is not KEY_ID@sha256:<64 hex digits> (`ztmesh keys fingerprint KEY_ID`)")
        signers.append(TrustedSigner(key_id, "sha256:" + digest.lower()))
    return tuple(signers)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class BundleSignature:
    """What a verified signature vouches for."""

    revision: str
    signed_at_ms: int
    signers: tuple[str, ...]  # key ids, classical first


def _json_part(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64url(text))
    except ValueError:
        raise BundleError(f"the signature's {what} is not base64url JSON", SIGNATURES_FILE) from None
    if not isinstance(value, dict):
        raise BundleError(f"the signature's {what} is not an object", SIGNATURES_FILE)
    return value


def _trusted(key_id: str, public: bytes, trusted: Iterable[TrustedSigner], algorithm: str) -> None:
    pin = fingerprint(public)
    if not any(s.key_id == key_id and s.fingerprint == pin for s in trusted):
        raise BundleError(
            f"signed by {algorithm} key {key_id} ({pin}), not a trusted signer (ZTMESH_POLICY_TRUSTED_SIGNERS)",
            SIGNATURES_FILE,
        )


def verify_bundle(root: Path, trusted: Iterable[TrustedSigner]) -> BundleSignature:
    """Check `.signatures.json` in `root`: both signatures valid and by trusted signers, and every file
    exactly as signed (none missing, none added, none changed). BundleError naming the problem."""
    trusted = tuple(trusted)
    path = root / SIGNATURES_FILE
    if not path.is_file():
        raise BundleError("the bundle is not signed (no .signatures.json); only signed bundles load", SIGNATURES_FILE)
    try:
        document = json.loads(path.read_text())
        (token,) = document["signatures"]
        pq_signature = _unb64url(document[PQ_FIELD])
        header_b64, payload_b64, signature_b64 = token.split(".")
        signature = _unb64url(signature_b64)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(
            f"not a signature file: expected one compact JWS in 'signatures' and '{PQ_FIELD}'", SIGNATURES_FILE
        ) from None
    header, claims = _json_part(header_b64, "header"), _json_part(payload_b64, "payload")
    if header.get("alg") != JWS_ALGORITHM:
        raise BundleError(f"the JWS algorithm is {header.get('alg')!r}, not {JWS_ALGORITHM}", SIGNATURES_FILE)
    ours = claims.get("ztmesh")
    try:
        ed_public = _unb64url(str(header["ztmesh_public_key"]))
        key_id = str(header["kid"])
        pq = ours["mldsa65"]  # type: ignore[index]
        pq_public, pq_key_id = _unb64url(str(pq["public_key"])), str(pq["key_id"])
        revision, signed_at_ms = str(ours["revision"]), int(ours["signed_at_ms"])  # type: ignore[index]
        listed = {str(f["name"]): str(f["hash"]) for f in claims["files"] if f.get("algorithm") == "SHA-256"}
    except (KeyError, TypeError, ValueError):
        raise BundleError(
            "the signature lacks ztmesh's claims (revision, signing time, keys)", SIGNATURES_FILE
        ) from None
    _trusted(key_id, ed_public, trusted, "Ed25519")
    _trusted(pq_key_id, pq_public, trusted, "ML-DSA-65")
    signing_input = f"{header_b64}.{payload_b64}".encode()
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(ed_public).verify(signature, signing_input)
        mldsa.MLDSA65PublicKey.from_public_bytes(pq_public).verify(pq_signature, signing_input)
    except (InvalidSignature, ValueError):
        raise BundleError("a signature does not verify: the signature file was altered", SIGNATURES_FILE) from None
    files = signed_files(root)
    for name in sorted(set(listed) - set(files)):
        raise BundleError("signed but missing from the bundle", name)
    for name in sorted(set(files) - set(listed)):
        raise BundleError("in the bundle but not covered by its signature", name)
    for name, content in files.items():
        if file_hash(name, content) != listed[name]:
            raise BundleError("changed since the bundle was signed (hash mismatch)", name)
    return BundleSignature(revision, signed_at_ms, (key_id, pq_key_id))


def manifest_revision(files: Mapping[str, bytes]) -> str:
    try:
        return str(json.loads(files[MANIFEST_FILE]).get("revision", ""))
    except (KeyError, ValueError, AttributeError):
        return ""


class BundleVerifier:
    """The policy service's gate: a bundle loads only when signed by trusted signers, for exactly its
    content, and not older than the one serving (nor the last one this data folder served: the
    floor file survives restarts)."""

    def __init__(self, trusted: Iterable[TrustedSigner], floor_file: Path | None = None) -> None:
        self.trusted = tuple(trusted)
        self.floor_file = floor_file
        self._floor = (0, "")  # (signed_at_ms, revision) of the newest bundle accepted
        if floor_file is not None and floor_file.is_file():
            try:
                saved = json.loads(floor_file.read_text())
                self._floor = (int(saved["signed_at_ms"]), str(saved["revision"]))
            except (ValueError, KeyError, TypeError):
                raise BundleError("unreadable: delete it only if no older signed bundle may load again",
                                  str(floor_file)) from None  # fmt: skip

    def check(self, root: Path, revision: str) -> BundleSignature:
        """Verify the signature of the bundle whose content hashes to `revision`; BundleError if not."""
        signature = verify_bundle(root, self.trusted)
        if signature.revision != revision:
            raise BundleError(
                f"signed for revision {signature.revision}, but the files are revision {revision}", SIGNATURES_FILE
            )
        floor_at, floor_revision = self._floor
        if signature.signed_at_ms < floor_at or (signature.signed_at_ms == floor_at and revision != floor_revision):
            raise BundleError(
                f"signed at {signature.signed_at_ms} ms, before the newest accepted bundle {floor_revision} "
                f"({floor_at} ms): an older signed bundle is not loaded again (sign it anew to roll back)",
                SIGNATURES_FILE,
            )
        return signature

    def _saved_floor(self) -> int:
        """The signing time the floor file holds now (0 when there is none or it cannot be read)."""
        try:
            return int(json.loads(self.floor_file.read_text())["signed_at_ms"]) if self.floor_file else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def accept(self, signature: BundleSignature) -> None:
        """Raise the floor to a bundle that now serves."""
        self._floor = (signature.signed_at_ms, signature.revision)
        if self.floor_file is None:
            return
        try:
            if self._saved_floor() >= self._floor[0]:
                return  # another replica sharing the file already recorded this bundle or a newer one
            self.floor_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.floor_file.with_name(f".{self.floor_file.name}.{os.getpid()}.{os.urandom(4).hex()}")
            temporary.write_text(json.dumps({"signed_at_ms": signature.signed_at_ms, "revision": signature.revision}))
            temporary.replace(self.floor_file)
        except OSError as exc:  # the bundle serves; only a restart would forget how new it is
            log.warning("replay floor %s not saved (kept in memory): %s", self.floor_file, exc)
