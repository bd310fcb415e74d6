"""mTLS credentials from files, reloaded when the files change, and the caller's SPIFFE ID.

Servers hand gRPC a certificate fetcher that gRPC calls at each new handshake; it re-reads the
files only when their stat changes, so cert-manager rotations take effect for new connections
without a restart, and a half-written or mismatched pair is refused while the old one keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztmesh.mesh.errors import CertificateError, PeerIdentityError
from ztmesh.mesh.spiffe import SpiffeId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Read and check the three files; raise CertificateError naming the file that is wrong."""
        data = []
        for label, path in (("certificate", self.cert), ("private key", self.key), ("CA bundle", self.ca)):
            try:
                data.append(path.read_bytes())
            except OSError as exc:
                raise CertificateError(f"cannot read {label} file {path}: {exc.strerror}") from None
        cert_pem, key_pem, ca_pem = data
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise CertificateError(f"{self.cert} is not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise CertificateError(f"{self.key} is not an unencrypted PEM private key") from None
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise CertificateError(f"{self.ca} is not a PEM CA bundle") from None
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise CertificateError(f"{self.key} does not match the certificate {self.cert}")
        return cert_pem, key_pem, ca_pem

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert, self.key, self.ca):
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)


class ReloadingServerCredentials:
    """Server credentials requiring client certificates, re-read when the files change on disk."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        cert_pem, key_pem, ca_pem = files.read()  # fail start-up on bad files
        self.reloads = 0
        self._initial = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._files.stamp()
        if stamp == self._stamp:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                cert_pem, key_pem, ca_pem = self._files.read()
            except CertificateError as exc:
                # Likely mid-rotation; keep serving with the previous pair and try again next handshake.
                log.warning("certificate reload skipped: %s", exc)
                return None
            self._stamp = stamp
            self.reloads += 1
            log.info("certificates reloaded from %s", self._files.cert)
            return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self._fetch, require_client_authentication=True)


def client_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert_pem, key_pem, ca_pem = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def secure_channel(address: str, files: TlsFiles, **options: object) -> grpc.Channel:
    """An mTLS channel to another mesh service."""
    return grpc.secure_channel(address, client_credentials(files), options=list(options.items()))


def aio_secure_channel(address: str, files: TlsFiles, **options: object) -> grpc.aio.Channel:
    """An asyncio mTLS channel to another mesh service, for callers on the serving loop."""
    return grpc.aio.secure_channel(address, client_credentials(files), options=list(options.items()))


# The post-quantum hybrid (ML-KEM-768 + X25519) that every ztmesh TLS hop prefers.
POST_QUANTUM_GROUP = "X25519MLKEM768"


def negotiated_group(context: Any) -> str | None:
    """The key-exchange group of the TLS connection this call arrived on (BoringSSL's name), or None."""
    values = context.auth_context().get("ssl_negotiated_key_exchange_group")
    return values[0].decode(errors="replace") if values else None


class KeyExchangeGuard:
    """Refuses every call that arrived over a connection whose key exchange was not X25519MLKEM768.

    grpcio's BoringSSL prefers X25519MLKEM768 but also accepts X25519, P-256, P-384 and P-521, and its
    Python API has no way to narrow that list, so a classical-only client still completes the
    handshake. The mesh interceptor answers it UNAUTHENTICATED on every call, before any handler runs
    (ZTMESH_TLS_REQUIRE_PQ).
    """

    @staticmethod
    def refusal(context: Any) -> str | None:
        """Why this call's connection is refused; None when its key exchange was post-quantum."""
        group = negotiated_group(context)
        if group == POST_QUANTUM_GROUP:
            return None
        return f"key exchange {group or 'unknown'} refused: this service requires {POST_QUANTUM_GROUP}"


@dataclass(frozen=True)
class _PeerIdentity:
    spiffe_id: SpiffeId | None
    problem: str = ""  # why the certificate's SPIFFE ID cannot be trusted, when it cannot


@lru_cache(maxsize=1024)
def _identity_from_pem(pem: bytes) -> _PeerIdentity:
    """What a verified client certificate says about its holder; a malformed one is logged here, once
    per certificate, so a peer retrying with it does not flood the log."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return _PeerIdentity(None)
    except ValueError as exc:
        identity = _PeerIdentity(None, f"its subject alternative names cannot be read ({exc})")
    else:
        spiffe = [u for u in uris if u.partition(":")[0].lower() == "spiffe"]
        if not spiffe:
            return _PeerIdentity(None)
        if len(spiffe) > 1:  # the SPIFFE X509-SVID spec allows exactly one
            identity = _PeerIdentity(None, f"it carries {len(spiffe)} SPIFFE IDs; an X509-SVID carries exactly one")
        else:
            try:
                return _PeerIdentity(SpiffeId.parse(spiffe[0]))
            except ValueError as exc:
                identity = _PeerIdentity(None, str(exc))
    log.warning("client certificate refused: %s", identity.problem)
    return identity


def peer_identity(context: Any) -> SpiffeId | None:
    """The SPIFFE ID in the verified client certificate of this call; None when the certificate (if
    any) carries none. Raises PeerIdentityError when it carries a malformed one, or several."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    identity = _identity_from_pem(pem[0])
    if identity.problem:
        raise PeerIdentityError(f"the client certificate's SPIFFE ID is not usable: {identity.problem}")
    return identity.spiffe_id


def peer_spiffe_id(context: Any) -> SpiffeId | None:
    """The SPIFFE ID in the verified client certificate of this call, or None (also when malformed)."""
    pem = context.auth_context().get("x509_pem_cert")
    return _identity_from_pem(pem[0]).spiffe_id if pem else None
