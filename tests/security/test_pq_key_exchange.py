"""Attack: downgrade the key exchange to a classical group that a future quantum computer breaks
("harvest now, decrypt later"). Every TLS hop must negotiate X25519MLKEM768 with a client that offers
it, and with ZTMESH_TLS_REQUIRE_PQ a classical-only client must get nothing from the mesh.

The client is Go's crypto/tls (tests/security/tlsprobe), which offers exactly the groups it is given,
so neither side's BoringSSL defaults can make a result look better than it is. Hops: gRPC into a
mesh service, the gateway listener, Envoy -> policy and Envoy -> upstream (the probe is the upstream).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.gateway import Gateway, cluster, listener, run_gateway, trust_token_keys
from tests.support.mesh import Pki, running, settings_for
from tests.support.processes import ServerProcess, spawn
from tests.support.servers import go_build
from tests.support.tokens import TokenIssuer, clinician
from ztmesh.mesh.echo import build_echo_app
from ztmesh.mesh.peers import PeerChannels
from ztmesh.mesh.server import MeshServer
from ztmesh.mesh.spiffe import authorize_any
from ztmesh.mesh.tls import POST_QUANTUM_GROUP
from ztmesh.policy.app import build_app

REPO = Path(__file__).resolve().parents[2]
PROBE_SOURCE = Path(__file__).parent / "tlsprobe"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
OK, UNAUTHENTICATED = 0, 16
POLICY_ENV = {
    "ZTMESH_POLICY_DIR": str(REPO / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(REPO / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(REPO / "policies" / "threat"),
    "ZTMESH_REGO_ENGINE": "embedded",
}
TREATMENT = {"user-agent": "ehr/2.1", "x-processing-purpose": "treatment"}


@dataclasses.dataclass(frozen=True)
class Probe:
    binary: Path
    pki: Pki

    def connect(
        self, port: int, groups: str, *, identity: str = "client", grpc_method: str = "", alpn: str = "h2"
    ) -> dict[str, Any]:
        """Handshake (and optionally one gRPC call) offering only `groups`; the probe's JSON report."""
        files = self.pki.files(identity)
        argv = [str(self.binary), "-connect", f"127.0.0.1:{port}", "-groups", groups, "-alpn", alpn,
                "-cert", str(files.cert), "-key", str(files.key), "-ca", str(files.ca)]  # fmt: skip
        if grpc_method:
            argv += ["-grpc", grpc_method]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        report: dict[str, Any] = json.loads(done.stdout)
        return report


@pytest.fixture(scope="module")
def probe(go_bin: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Probe:
    return Probe(go_build(PROBE_SOURCE, tmp_path_factory.mktemp("tlsprobe") / "tlsprobe", go_bin), pki)


@pytest.fixture(scope="module")
def strict_policy(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshServer]:
    """The real policy service with ZTMESH_TLS_REQUIRE_PQ on: it answers only over X25519MLKEM768."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in POLICY_ENV.items():
            env.setenv(key, value)
        env.delenv("ZTMESH_REDIS_URL", raising=False)
        settings = settings_for(pki, tmp_path_factory.mktemp("policy"), tls_require_pq=True)
        server = MeshServer(build_app(settings), settings)
        server.start()
        try:
            yield server
        finally:
            server.stop(grace=0.5)


@pytest.fixture(scope="module")
def lenient_echo(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshServer]:
    """A mesh server on the defaults (ZTMESH_TLS_REQUIRE_PQ off)."""
    settings = settings_for(pki, tmp_path_factory.mktemp("echo"))
    with running(build_echo_app(authorize_any()), settings, identity="keys") as server:
        yield server


# --- gRPC into a mesh service -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strict", "groups", "negotiated", "status"),
    [
        (True, "X25519MLKEM768", "X25519MLKEM768", OK),
        (True, "X25519MLKEM768,X25519,P-256", "X25519MLKEM768", OK),
        (True, "X25519", "X25519", UNAUTHENTICATED),
        (True, "P-256,P-384", "P-256", UNAUTHENTICATED),
        (False, "X25519MLKEM768,X25519", "X25519MLKEM768", OK),
        (False, "X25519", "X25519", OK),
    ],
    ids=["pq-only", "pq-first", "x25519-refused", "p256-refused", "default-pq-first", "default-x25519-allowed"],
)  # fmt: skip
def test_mesh_service_negotiates_the_hybrid_and_the_setting_refuses_classical(
    probe, strict_policy, lenient_echo, strict, groups, negotiated, status
):
    server = strict_policy if strict else lenient_echo
    report = probe.connect(server.port, groups, grpc_method=HEALTH_CHECK)
    assert report["ok"], report
    assert report["group"] == negotiated and report["version"] == "TLS 1.3"
    assert report["grpc_status"] == status, report
    if status == UNAUTHENTICATED:
        # grpcio names the group its own way (P-256 is "prime256v1"); the refusal names what is required.
        assert "refused: this service requires X25519MLKEM768" in report["grpc_message"], report


def test_mesh_clients_reach_a_strict_service(pki, tmp_path, strict_policy):
    """grpcio to grpcio (PeerChannels, as the services call each other) passes the strict guard, so
    the hop between services negotiated X25519MLKEM768."""
    peers = PeerChannels(settings_for(pki, tmp_path, policy_addr=f"localhost:{strict_policy.port}"), "audit")
    try:
        health = health_pb2_grpc.HealthStub(peers.channel("policy"))
        assert health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10).status == 1
    finally:
        peers.close()
    with pki.channel("client", strict_policy.port) as channel:  # the operator CLI's channel
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10).status == 1


# --- Envoy ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_upstream(probe: Probe, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The probe as the protected upstream, accepting only X25519MLKEM768 and answering with what it saw."""
    if not (pki.directory / "backend.crt").exists():
        pki.issue("backend")
    files = pki.files("backend")

    def argv(port: int) -> list[str]:
        return [str(probe.binary), "-listen", f"127.0.0.1:{port}", "-groups", POST_QUANTUM_GROUP,
                "-cert", str(files.cert), "-key", str(files.key), "-ca", str(files.ca)]  # fmt: skip

    def ready(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    handle: ServerProcess
    handle, port = spawn("tlsprobe", tmp_path_factory.mktemp("probe-upstream"), argv, ready, timeout=20)
    try:
        yield port
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def idp() -> TokenIssuer:
    return TokenIssuer()


def _gateway(
    envoy_bin: Path, root: Path, pki: Pki, policy_port: int, upstream_port: int, *edits: Callable[[Any], None]
) -> Any:
    def edit(config: dict[str, Any]) -> None:
        for change in edits:
            change(config)

    return run_gateway(str(envoy_bin), root, pki.directory, policy_port=policy_port, upstream_port=upstream_port,
                       edit=edit)  # fmt: skip


def _tls_params(context: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = context["typed_config"]["common_tls_context"]["tls_params"]
    return params


def listener_tls(config: dict[str, Any]) -> dict[str, Any]:
    return _tls_params(listener(config, "gateway")["filter_chains"][0]["transport_socket"])


def cluster_tls(config: dict[str, Any], name: str) -> dict[str, Any]:
    return _tls_params(cluster(config, name)["transport_socket"])


def refuse_classical_at_the_listener(config: dict[str, Any]) -> None:
    """The operator's switch for the gateway (deploy/envoy/envoy-gateway.yaml says so): only the hybrid."""
    listener_tls(config)["ecdh_curves"] = [POST_QUANTUM_GROUP]


@pytest.fixture(scope="module")
def gateway(
    envoy_bin, tmp_path_factory, pki, strict_policy, probe_upstream, idp
) -> Iterator[Gateway]:  # fmt: skip
    root = tmp_path_factory.mktemp("gateway")
    with _gateway(envoy_bin, root, pki, strict_policy.port, probe_upstream, trust_token_keys(idp.jwks())) as gw:
        yield gw


def test_shipped_envoy_config_pins_the_hybrid_on_every_hop():
    import yaml

    config = yaml.safe_load((REPO / "deploy" / "envoy" / "envoy-gateway.yaml").read_text())
    assert listener_tls(config)["ecdh_curves"][0] == POST_QUANTUM_GROUP
    assert cluster_tls(config, "upstream")["ecdh_curves"][0] == POST_QUANTUM_GROUP
    # Envoy -> policy: both ends are ztmesh, so nothing classical is even offered.
    assert cluster_tls(config, "ztmesh_policy")["ecdh_curves"] == [POST_QUANTUM_GROUP]


@pytest.mark.parametrize(
    ("groups", "negotiated"),
    [("X25519MLKEM768", "X25519MLKEM768"), ("X25519MLKEM768,X25519,P-256", "X25519MLKEM768"), ("X25519", "X25519")],
    ids=["pq-only", "pq-first", "classical-fallback"],
)
def test_gateway_listener_negotiates_the_hybrid(probe, gateway, groups, negotiated):
    report = probe.connect(gateway.https_port, groups, alpn="h2,http/1.1")
    assert report["ok"], report
    assert report["group"] == negotiated


def test_gateway_listener_can_refuse_classical_only_clients(envoy_bin, tmp_path, pki, probe):
    # Policy and upstream are never reached: only the listener's handshake is under test.
    with _gateway(envoy_bin, tmp_path, pki, 9, 9, refuse_classical_at_the_listener) as gw:
        refused = probe.connect(gw.https_port, "X25519,P-256,P-384", alpn="h2,http/1.1")
        assert not refused["ok"] and "handshake failure" in refused["error"], refused
        accepted = probe.connect(gw.https_port, "X25519MLKEM768,X25519", alpn="h2,http/1.1")
        assert accepted["ok"] and accepted["group"] == POST_QUANTUM_GROUP, accepted


def test_envoy_negotiates_the_hybrid_with_the_policy_service_and_the_upstream(gateway, idp):
    """A request through the gateway: the policy service (strict) answered the check, so Envoy -> policy
    was X25519MLKEM768; the probe upstream (hybrid only) says what Envoy -> upstream negotiated."""
    token = {"authorization": f"Bearer {idp.token(clinician())}"}
    status, _, body = gateway.request("GET", "/api/patients/42", {**token, **TREATMENT}, identity=None)
    assert status == 200, body
    upstream_saw = json.loads(body)
    assert upstream_saw["group"] == POST_QUANTUM_GROUP and upstream_saw["version"] == "TLS 1.3"
    assert upstream_saw["peer"] == "spiffe://ztmesh.local/ns/ztmesh/sa/envoy"
    # Envoy's own per-group handshake counters agree, for both upstream clusters.
    assert gateway.stat(f"cluster.ztmesh_policy.ssl.curves.{POST_QUANTUM_GROUP}") >= 1
    assert gateway.stat(f"cluster.upstream.ssl.curves.{POST_QUANTUM_GROUP}") >= 1
    assert gateway.stat("cluster.ztmesh_policy.ssl.curves.X25519") == 0


def test_policy_service_refuses_envoy_offering_classical_groups(envoy_bin, tmp_path, pki, strict_policy):
    """If Envoy -> policy were configured with classical groups, the strict policy service would refuse
    every check and the gateway would fail closed (never an ALLOW)."""

    def classical_to_policy(config: dict[str, Any]) -> None:
        cluster_tls(config, "ztmesh_policy")["ecdh_curves"] = ["X25519"]

    with _gateway(envoy_bin, tmp_path, pki, strict_policy.port, 9, classical_to_policy) as gw:
        status, _, _ = gw.request("GET", "/public/index.html", TREATMENT, identity="client")
        assert status == 503, "a check over a classical key exchange is never answered: the gateway fails closed"
        assert gw.stat("cluster.ztmesh_policy.ssl.curves.X25519") >= 1
