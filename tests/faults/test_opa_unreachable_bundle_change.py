"""Fault: the policy bundle changes while the OPA sidecar is down. Meanwhile every decision is a
DENY and GetPolicyInfo names the revision that last served, the checked one waiting and why; once
OPA is back, the new revision serves within a bound (no restart, no manual reload)."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.policy.conftest import bundle_dir, clock, make_engine, physician, with_resource
from ztmesh.policy.bundle import read_bundle
from ztmesh.policy.model import Fault, Outcome
from ztmesh.policy.watch import PolicyWatcher

FIXTURES = (bundle_dir, clock, make_engine)  # the policy fixtures, used by name below
APPLY_BOUND_S = 10.0  # watcher interval 0.1 s + OPA's first fetch (it polls 1-2 s before its first answer)


def _wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


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
        _wait_for(lambda: new in engine.info().last_error, 10, "the watcher tried the new bundle")
        assert engine.bundles.pending == new

        info = engine.info()
        assert info.revision == old
        assert "unreachable" in info.last_error and new in info.last_error, info.last_error
        assert f"{old} keeps serving" in info.last_error
        down = engine.decide(confidential)
        assert (down.outcome, down.fault) == (Outcome.DENY, Fault.ENGINE_UNAVAILABLE)

        opa_sidecar.start()
        took = _wait_for(lambda: engine.bundles.current.revision == new, APPLY_BOUND_S, "the new revision serves")
    finally:
        watcher.stop()
    decision = engine.decide(confidential)
    assert (decision.outcome, decision.obligations, decision.policy_revision) == (Outcome.ALLOW, ("watermark",), new)
    info = engine.info()
    assert (info.revision, info.last_error) == (new, "")
    manifest = requests.get(f"{opa_sidecar.url}/v1/data/system/bundles/ztmesh/manifest", timeout=5).json()["result"]
    assert manifest["revision"] == new
    print(f"new revision serving {took:.2f} s after OPA returned")
