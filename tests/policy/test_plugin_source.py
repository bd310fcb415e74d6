"""Plugins as decision data sources: a real plugins service runs the lgpd-analyzer (built from its C
source) on each request's attributes, and a policy reads its findings at input.plugins.lgpd. A plugin
that cannot answer fails the decision closed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from google.protobuf import struct_pb2

from tests.policy.conftest import serve_policy_from
from tests.policy.test_service import physician, stub
from tests.support.mesh import running, settings_for
from tests.support.processes import free_port
from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc
from ztmesh._proto.policy.v1 import policy_pb2
from ztmesh.mesh.errors import SettingsError
from ztmesh.plugins.app import build_app as build_plugins_app
from ztmesh.plugins.manifest import Manifest
from ztmesh.plugins.servicer import manifest_to_proto
from ztmesh.policy.app import build_app

ROOT = Path(__file__).resolve().parents[2]

# Deny when the request carries personal data the lgpd-analyzer rates as high risk.
PII_POLICY = """package ztmesh.authz

import rego.v1

default decision := {"outcome": "allow", "reasons": ["no high-risk personal data"], "obligations": [], "step_up": []}

decision := {
	"outcome": "deny",
	"reasons": [sprintf("personal data in the request: %v risk %v", [
		input.plugins.lgpd.compliance_level,
		input.plugins.lgpd.risk_score,
	])],
	"obligations": [], "step_up": [],
} if input.plugins.lgpd.risk_score >= 50
"""
PII_POLICY_TEST = """package ztmesh.authz_test

import rego.v1

test_high_risk_denied if {
	found := {"lgpd": {"risk_score": 80, "compliance_level": "critical"}}
	data.ztmesh.authz.decision.outcome == "deny" with input as {"plugins": found}
}

test_low_risk_allowed if {
	data.ztmesh.authz.decision.outcome == "allow" with input as {"plugins": {"lgpd": {"risk_score": 10}}}
}
"""


@pytest.fixture(scope="module")
def analyzer() -> tuple[bytes, Manifest]:
    build = subprocess.run(["make", "-C", str(ROOT / "plugins")], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, f"make plugins failed (clang and lld come from make setup):\n{build.stderr}"
    manifest = Manifest.from_json(yaml.safe_load((ROOT / "plugins" / "lgpd-analyzer" / "manifest.yaml").read_text()))
    return (ROOT / "plugins" / "build" / "lgpd-analyzer.wasm").read_bytes(), manifest


@pytest.fixture
def pii_bundle(tmp_path: Path) -> Path:
    root = tmp_path / "pii"
    root.mkdir()
    (root / "authz.rego").write_text(PII_POLICY)
    (root / "authz_test.rego").write_text(PII_POLICY_TEST)
    return root


def policy_settings(pki, tmp_path, monkeypatch, bundle: Path, plugins_port: int, specs: str):
    serve_policy_from(monkeypatch, bundle)
    monkeypatch.setenv("ZTMESH_DECISION_PLUGINS", specs)
    return settings_for(pki, tmp_path / "policy", plugins_addr=f"localhost:{plugins_port}")


def with_text(text: str) -> policy_pb2.DecideRequest:
    request = physician()
    request.attributes.CopyFrom(struct_pb2.Struct(fields={"text": struct_pb2.Value(string_value=text)}))
    return request


def test_lgpd_analyzer_findings_reach_the_policy(pki, tmp_path, monkeypatch, analyzer, pii_bundle) -> None:
    monkeypatch.setenv("ZTMESH_PLUGIN_SIGNING_REQUIRED", "false")
    plugins_settings = settings_for(pki, tmp_path / "plugins")
    with running(build_plugins_app(plugins_settings), plugins_settings) as plugins_server:
        module, manifest = analyzer
        plugins_pb2_grpc.PluginServiceStub(pki.channel("client", plugins_server.port)).RegisterPlugin(
            plugins_pb2.RegisterPluginRequest(module=module, manifest=manifest_to_proto(manifest)), timeout=30
        )
        settings = policy_settings(pki, tmp_path, monkeypatch, pii_bundle, plugins_server.port,
                                   "lgpd=lgpd-analyzer:analyze")  # fmt: skip
        with running(build_app(settings), settings) as server:
            policy = stub(pki, server)
            clean = policy.Decide(with_text("consulta de rotina, retorno em 30 dias"), timeout=10)
            assert clean.decision == policy_pb2.DECISION_ALLOW, clean.reasons
            exported = policy.Decide(
                with_text("Paciente Maria da Silva, CPF 529.982.247-25, e-mail maria@example.com, tel (11) 98765-4321"),
                timeout=10,
            )
            assert exported.decision == policy_pb2.DECISION_DENY
            assert exported.reasons[0].startswith("personal data in the request: "), exported.reasons


def test_unreachable_plugins_service_denies_naming_the_plugin(pki, tmp_path, monkeypatch, pii_bundle) -> None:
    settings = policy_settings(pki, tmp_path, monkeypatch, pii_bundle, free_port(), "lgpd=lgpd-analyzer:analyze")
    with running(build_app(settings), settings) as server:
        reply = stub(pki, server).Decide(with_text("consulta de rotina"), timeout=10)
    assert reply.decision == policy_pb2.DECISION_DENY
    assert reply.fault == policy_pb2.FAULT_PLUGIN_ERROR
    assert reply.reasons[0].startswith("plugin lgpd failed: UNAVAILABLE"), reply.reasons


@pytest.mark.parametrize("specs", ["lgpd", "lgpd=lgpd-analyzer", "x=a:f,x=b:g", "Bad=a:f"])
def test_bad_plugin_specs_stop_start_up_naming_the_setting(pki, tmp_path, monkeypatch, pii_bundle, specs) -> None:
    settings = policy_settings(pki, tmp_path, monkeypatch, pii_bundle, free_port(), specs)
    with pytest.raises(SettingsError, match="ZTMESH_DECISION_PLUGINS"):
        build_app(settings)
