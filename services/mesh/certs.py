"""A development certificate authority: `ztmesh certs init` and the test fixtures use it.

It issues short ECDSA P-256 certificates whose URI SAN is the workload's SPIFFE ID and whose DNS
SANs cover localhost and the Kubernetes service names. Production certificates come from
cert-manager (k8s/), not from here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztmesh.mesh.spiffe import SpiffeId
from ztmesh.mesh.topology import EXTRA_IDENTITIES, SERVICES


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "ztmesh dev CA", days: int = 365) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: the dev CA key must be an EC key")
        return cls(cert, key)

    def issue(
        self,
        spiffe_id: SpiffeId,
        dns_names: list[str],
        *,
        days: int = 90,
        not_after: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf certificate usable for both server and client authentication."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.service_account or "x")]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def kubernetes_dns_names(service: str, namespace: str) -> list[str]:
    return [
        "localhost",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def write_pem(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    """Write a certificate (0644) or a private key (0600) atomically, so a watcher never sees half a file."""
    if cert is not None:
        data, mode = cert.public_bytes(serialization.Encoding.PEM), 0o644
    elif key is not None:
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        mode = 0o600
    else:
        raise ValueError("write_pem needs a certificate or a key")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def issue_identity(
    ca: CertificateAuthority, directory: Path, name: str, trust_domain: str, namespace: str, **kwargs: object
) -> tuple[Path, Path]:
    """Issue and write `<name>.crt` / `<name>.key` for the workload `name`; return their paths."""
    spiffe_id = SpiffeId.for_workload(trust_domain, namespace, name)
    cert, key = ca.issue(spiffe_id, kubernetes_dns_names(name, namespace), **kwargs)  # type: ignore[arg-type]
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    write_pem(key_path, key=key)
    write_pem(cert_path, cert=cert)
    return cert_path, key_path


def init_dev_pki(directory: Path, trust_domain: str, namespace: str, *, force: bool = False) -> list[Path]:
    """Create a dev CA and certificates for the four services, Envoy and a client in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.crt").exists() and not force:
        raise FileExistsError(f"{directory / 'ca.crt'} exists; pass --force to replace the dev PKI")
    ca = CertificateAuthority.create()
    write_pem(directory / "ca.key", key=ca.key)
    write_pem(directory / "ca.crt", cert=ca.certificate)
    written = [directory / "ca.crt", directory / "ca.key"]
    for name in (*SERVICES, *EXTRA_IDENTITIES):
        written.extend(issue_identity(ca, directory, name, trust_domain, namespace))
    return written
