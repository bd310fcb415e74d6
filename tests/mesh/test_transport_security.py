"""mTLS and SPIFFE authorization on a real server: who gets in, who is refused, and rotation."""

from __future__ import annotations

import shutil

import grpc
import pytest

from tests.support.mesh import Pki, foreign_pki, running, settings_for
from ztmesh._proto.echo.v1 import echo_pb2, echo_pb2_grpc
from ztmesh.mesh.echo import build_echo_app
from ztmesh.mesh.spiffe import authorize_service_accounts
from ztmesh.mesh.tls import TlsFiles, client_credentials

ONLY_POLICY = authorize_service_accounts("ztmesh.local", "ztmesh", ["policy"])


def echo(channel: grpc.Channel, message: str = "hi") -> echo_pb2.EchoResponse:
    return echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest(message=message), timeout=5)


@pytest.fixture
def server(pki, tmp_path):
    # The echo server wears the `keys` identity; only `policy` may call Echo.
    with running(build_echo_app(ONLY_POLICY), settings_for(pki, tmp_path), identity="keys") as srv:
        yield srv


def test_allowed_spiffe_id_gets_through(pki, server):
    with pki.channel("policy", server.port) as channel:
        reply = echo(channel, "hello")
    assert reply.message == "hello"
    assert reply.caller_spiffe_id == "spiffe://ztmesh.local/ns/ztmesh/sa/policy"


@pytest.mark.parametrize("identity", ["client", "audit", "envoy"])
def test_valid_certificate_with_wrong_spiffe_id_is_denied(pki, server, identity):
    with pki.channel(identity, server.port) as channel, pytest.raises(grpc.RpcError) as err:
        echo(channel)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"sa/{identity} may not call /ztmesh.echo.v1.EchoService/Echo" in err.value.details()


def test_other_trust_domain_with_same_service_name_is_denied(pki, server):
    pki.issue("policy-elsewhere", trust_domain="evil.example")
    with pki.channel("policy-elsewhere", server.port) as channel, pytest.raises(grpc.RpcError) as err:
        echo(channel)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_plaintext_client_is_refused(server):
    with grpc.insecure_channel(f"localhost:{server.port}") as channel, pytest.raises(grpc.RpcError) as err:
        echo(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(pki, server):
    creds = grpc.ssl_channel_credentials(root_certificates=(pki.directory / "ca.crt").read_bytes())
    with grpc.secure_channel(f"localhost:{server.port}", creds) as channel, pytest.raises(grpc.RpcError) as err:
        echo(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(pki, server, tmp_path):
    attacker = foreign_pki(tmp_path / "attacker")
    # The attacker trusts our CA (to get past its own server check) but presents its own cert.
    files = TlsFiles(attacker.directory / "policy.crt", attacker.directory / "policy.key", pki.directory / "ca.crt")
    with grpc.secure_channel(f"localhost:{server.port}", client_credentials(files)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            echo(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_replaced_certificate_files_apply_to_new_connections(pki, tmp_path):
    cert_dir = tmp_path / "server-certs"
    shutil.copytree(pki.directory, cert_dir)
    settings = settings_for(pki, tmp_path, cert_dir=cert_dir)
    with running(build_echo_app(ONLY_POLICY), settings, identity="keys") as srv:
        first = _server_certificate_serial(pki, srv.port)
        # Rotate: a new `keys` certificate from the same CA, written in place like cert-manager does.
        Pki(cert_dir).issue("keys")
        second = _server_certificate_serial(pki, srv.port)
        assert second != first
        assert srv.tls.reloads == 1
        with pki.channel("policy", srv.port) as channel:
            assert echo(channel, "after rotation").message == "after rotation"


def _server_certificate_serial(pki, port: int) -> int:
    """Open a fresh TLS connection and return the serial of the certificate the server presented."""
    import socket
    import ssl

    from cryptography import x509

    context = ssl.create_default_context(cafile=str(pki.directory / "ca.crt"))
    context.load_cert_chain(pki.directory / "policy.crt", pki.directory / "policy.key")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("localhost", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_stubs_on_peer_channels_follow_a_client_certificate_rotation(pki, server, tmp_path):
    """A client built once (e.g. the audit emitter's sink) keeps working after its workload's certificate
    is rotated and the connection made with the old one is closed."""
    import time

    from ztmesh.mesh.peers import PeerChannels

    cert_dir = tmp_path / "client-certs"
    shutil.copytree(pki.directory, cert_dir)
    settings = settings_for(pki, tmp_path, cert_dir=cert_dir, keys_addr=f"localhost:{server.port}")
    peers = PeerChannels(settings, "policy", recheck_s=0.0, retire_after_s=0.05)
    try:
        stub = echo_pb2_grpc.EchoServiceStub(peers.channel("keys"))
        assert stub.Echo(echo_pb2.EchoRequest(message="before"), timeout=5).message == "before"
        Pki(cert_dir).issue("policy")  # cert-manager writes the renewed certificate in place
        time.sleep(0.05)
        assert stub.Echo(echo_pb2.EchoRequest(message="rotated"), timeout=5).message == "rotated"
        time.sleep(0.3)  # the connection made with the old certificate is closed by now
        assert stub.Echo(echo_pb2.EchoRequest(message="after"), timeout=5).message == "after"
    finally:
        peers.close()
