"""Fault: OPA is unreachable when a bundle must reach it — the bundle changes while the OPA sidecar is
down, or the policy service starts before it. Meanwhile every decision is a DENY and GetPolicyInfo
names the revision that last served (if any), the checked one waiting and why; once OPA is back,
the new revision serves within a bound (no restart, no manual reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.policy.conftest import (
    bundle_dir,
    clock,
    make_engine,
    physician,
    policy_dir,
    serve_policy_from,
    with_resource,
)
from tests.support.mesh import running, settings_for
from tests.support.opa_bundles import OpaSidecar
from tests.support.processes import wait_until
from tests.support.servers import free_port
from ztmesh._proto.policy.v1 import policy_pb2, policy_pb2_grpc
from ztmesh.policy.app import build_app
from ztmesh.policy.bundle import read_bundle
from ztmesh.policy.cli import request_to_proto
from ztmesh.policy.model import Fault, Outcome
from ztmesh.policy.watch import PolicyWatcher

FIXTURES = (bundle_dir, clock, make_engine, policy_dir)  # the policy fixtures, used by name below
APPLY_BOUND_S = 10.0  # watcher interval 0.1 s + OPA's first fetch (it polls 1-2 s before its first answer)


def _add_watermark_obligation(bundle_dir: Path) -> None:
    data = bundle_dir / "data.json"
    data.write_text(data.read_text().replace('"obligations": {', '"obligations": {"confidential": ["watermark"], '))


def test_a_change_made_while_opa_is_down_serves_once_it_returns(make_engine, bundle_dir, opa_sidecar):
    engine = make_engine(rego=opa_sidecar.engine(activation_timeout_s=2.0), bundle_root=bundle_dir)
    confidential = with_resource(physician(), classification="confidential")
    old = engine.bundles.current.revision
    assert engine.decide(confidential).obligations == ()
    watcher = PolicyWatcher(engine, interval_s=0.1)
    watcher.start()
    try:
        opa_sidecar.stop()
        info = engine.info()  # nothing pending yet: the engine itself is asked
        assert info.revision == old and "serves no bundle (unreachable" in info.last_error, info.last_error
        _add_watermark_obligation(bundle_dir)
        new = read_bundle(bundle_dir).revision
        wait_until(lambda: new in engine.info().last_error, 10, "the watcher tried the new bundle")
        assert engine.bundles.pending == new

        info = engine.info()
        assert info.revision == old
        assert "unreachable" in info.last_error and new in info.last_error, info.last_error
        assert f"{old} keeps serving" in info.last_error
        down = engine.decide(confidential)
        assert (down.outcome, down.fault) == (Outcome.DENY, Fault.ENGINE_UNAVAILABLE)

        opa_sidecar.start()
        took = wait_until(lambda: engine.bundles.current.revision == new, APPLY_BOUND_S, "the new revision serves")
    finally:
        watcher.stop()
    decision = engine.decide(confidential)
    assert (decision.outcome, decision.obligations, decision.policy_revision) == (Outcome.ALLOW, ("watermark",), new)
    info = engine.info()
    assert (info.revision, info.last_error) == (new, "")
    manifest = requests.get(f"{opa_sidecar.url}/v1/data/system/bundles/ztmesh/manifest", timeout=5).json()["result"]
    assert manifest["revision"] == new
    print(f"new revision serving {took:.2f} s after OPA returned")


def test_a_policy_service_started_before_its_opa_sidecar_serves_once_opa_is_up(
    pki, tmp_path, policy_dir, monkeypatch, opa_bin
):
    """The whole service as deployed with k8s/components/opa-sidecar, OPA starting second: meanwhile
    GetPolicyInfo names no revision and says why; then OPA pulls the bundle and decisions flow."""
    port = free_port()
    serve_policy_from(monkeypatch, policy_dir)
    for key, value in {"ZTMESH_REGO_ENGINE": "opa", "ZTMESH_OPA_BUNDLE_LISTEN": f"127.0.0.1:{port}",
                       "ZTMESH_RELOAD_INTERVAL": "0.1", "ZTMESH_OPA_TIMEOUT": "0.5"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)

    def pull_from_the_service(config: dict[str, Any]) -> None:
        config["services"]["ztmesh"]["url"] = f"http://127.0.0.1:{port}"

    sidecar = OpaSidecar(opa_bin, tmp_path, pull_from_the_service)
    monkeypatch.setenv("ZTMESH_OPA_URL", sidecar.url)
    settings = settings_for(pki, tmp_path / "policy")
    try:
        with running(build_app(settings), settings) as server, pki.channel("client", server.port) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10)
            assert (info.engine, info.revision) == ("opa", "") and "unreachable" in info.last_error, info
            sidecar.start()
            wait_until(lambda: stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10).revision != "",
                      APPLY_BOUND_S, "the bundle serves")  # fmt: skip
            info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10)
            assert (info.revision, info.last_error) == (read_bundle(policy_dir).revision, "")
            reply = stub.Decide(request_to_proto(physician()), timeout=10)
            assert (reply.decision, reply.policy_revision) == (policy_pb2.DECISION_ALLOW, info.revision)
    finally:
        sidecar.close()
