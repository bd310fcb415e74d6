"""Fixtures for tests of mesh services: a dev PKI, settings pointing at it, and in-process servers
on ephemeral ports reached over real mTLS."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztmesh.mesh.certs import CertificateAuthority, init_dev_pki, issue_identity, write_pem
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.server import MeshServer, ServiceApp
from ztmesh.mesh.tls import TlsFiles, client_credentials

TRUST_DOMAIN = "ztmesh.local"
NAMESPACE = "ztmesh"


@dataclasses.dataclass(frozen=True)
class Pki:
    """A dev PKI on disk: `ca.crt` plus `<identity>.crt/.key` for the services, envoy and client."""

    directory: Path

    def files(self, identity: str) -> TlsFiles:
        return TlsFiles(
            self.directory / f"{identity}.crt", self.directory / f"{identity}.key", self.directory / "ca.crt"
        )

    def issue(self, identity: str, *, trust_domain: str = TRUST_DOMAIN, **kwargs: Any) -> TlsFiles:
        """Issue another workload certificate from this PKI's CA."""
        ca = CertificateAuthority.load(self.directory / "ca.crt", self.directory / "ca.key")
        issue_identity(ca, self.directory, identity, trust_domain, NAMESPACE, **kwargs)
        return self.files(identity)

    def issue_presenting(self, name: str, uris: Sequence[str] = (), common_name: str = "") -> TlsFiles:
        """Issue `<name>.crt/.key` from this PKI's CA with exactly these URI SANs, verbatim: none, a
        foreign or malformed SPIFFE ID, several. The CA vouches for it, so only the identity check can
        refuse it (a compromised or misused issuer)."""
        ca = CertificateAuthority.load(self.directory / "ca.crt", self.directory / "ca.key")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)]))
            .issuer_name(ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if uris:
            sans = [x509.UniformResourceIdentifier(uri) for uri in uris]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write_pem(self.directory / f"{name}.key", key=key)
        write_pem(self.directory / f"{name}.crt", cert=builder.sign(ca.key, hashes.SHA256()))
        return self.files(name)

    def channel(self, identity: str, port: int) -> grpc.Channel:
        return grpc.secure_channel(f"localhost:{port}", client_credentials(self.files(identity)))


def make_pki(directory: Path) -> Pki:
    init_dev_pki(directory, TRUST_DOMAIN, NAMESPACE)
    return Pki(directory)


def foreign_pki(directory: Path) -> Pki:
    """A PKI with its own CA: its certificates carry mesh-looking SPIFFE IDs the mesh must not trust."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("attacker CA")
    write_pem(directory / "ca.key", key=ca.key)
    write_pem(directory / "ca.crt", cert=ca.certificate)
    for name in ("client", "policy"):
        issue_identity(ca, directory, name, TRUST_DOMAIN, NAMESPACE)
    return Pki(directory)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings_for(pki: Pki, data_dir: Path, **overrides: Any) -> MeshSettings:
    """Settings for an in-process server: ephemeral port, no metrics/health listeners."""
    base = MeshSettings(
        cert_dir=pki.directory, data_dir=data_dir, port=0, metrics_port=0, health_port=0, grace_period=5.0
    )
    return dataclasses.replace(base, **overrides)


@contextlib.contextmanager
def running(app: ServiceApp, settings: MeshSettings, *, identity: str | None = None) -> Iterator[MeshServer]:
    server = MeshServer(app, settings, identity=identity)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0)
