"""Fail closed: whatever breaks — the OPA server killed mid-run, a policy that errors or answers
nonsense at run time, an audit trail that cannot record, a failing data source, a bug — the
decision is DENY with a reason, and no exception escapes."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.policy.conftest import EventLog, physician, with_resource
from tests.support.processes import wait_until
from ztmesh.policy.decider import PolicyEngine
from ztmesh.policy.model import DecisionRequest, Fault, Outcome

# A bundle whose decision misbehaves only for some inputs, so it passes its checks and serves.
TRICKY = """package ztmesh.authz

decision := {"outcome": "permit"} if input.action == "malform"
else := {"outcome": "allow", "reasons": [sprintf("risk %v", [input.plugins.lgpd.risk])], "obligations": [],
	"step_up": []} if {
	input.action == "scan"
}
else := {"outcome": "allow", "reasons": ["ok"], "obligations": [], "step_up": []} if {
	input.action != "vanish"
	1 / count(input.resource.consented_purposes) > 0
}
"""
TRICKY_TEST = """package ztmesh.authz_test

test_allows if {
	allowed := {"action": "read", "resource": {"consented_purposes": ["x"]}}
	data.ztmesh.authz.decision.outcome == "allow" with input as allowed
}
"""


@pytest.fixture
def tricky(tmp_path: Path) -> Path:
    root = tmp_path / "tricky"
    root.mkdir()
    (root / "authz.rego").write_text(TRICKY)
    (root / "authz_test.rego").write_text(TRICKY_TEST)
    return root


@pytest.mark.parametrize(
    ("action", "consents", "fault", "reason"),
    [
        ("read", ("treatment",), Fault.NONE, "ok"),
        ("malform", ("treatment",), Fault.MALFORMED_DECISION, "malformed policy decision: 'outcome' must be"),
        ("vanish", ("treatment",), Fault.MALFORMED_DECISION, "malformed policy decision: the decision is undefined"),
        (
            "read",
            (),
            Fault.ENGINE_ERROR,
            r"policy engine error: rego evaluation failed: authz.rego:\d+: .*divide by zero",
        ),
    ],
)
def test_policy_misbehaving_at_run_time_is_a_deny(make_engine, tricky, action, consents, fault, reason):
    decision = make_engine(bundle_root=tricky).decide(
        with_resource(physician(action=action), consented_purposes=consents)
    )
    assert decision.fault is fault
    assert re.match(reason, decision.reasons[0]), decision.reasons
    assert decision.outcome is (Outcome.ALLOW if fault is Fault.NONE else Outcome.DENY)


class Lgpd:
    """A data source standing in for the lgpd-analyzer plugin client (the plugins service is tested on its own)."""

    name = "lgpd"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def enrich(self, request: DecisionRequest) -> dict[str, Any]:
        if self.fail:
            raise ConnectionError("plugins service unreachable")
        return {"risk": 42}


def test_plugin_data_reaches_the_policy_and_a_failing_plugin_denies(make_engine, tricky):
    assert make_engine(bundle_root=tricky, plugins=[Lgpd()]).decide(physician(action="scan")).reasons == ("risk 42",)
    decision = make_engine(bundle_root=tricky, plugins=[Lgpd(fail=True)]).decide(physician(action="scan"))
    assert (decision.outcome, decision.fault) == (Outcome.DENY, Fault.PLUGIN_ERROR)
    assert decision.reasons == ("plugin lgpd failed: plugins service unreachable",)


def test_every_decision_is_audited_before_it_is_returned(make_engine):
    log = EventLog()
    engine = make_engine(audit=log)
    decision = engine.decide(physician(), caller="spiffe://ztmesh.local/ns/ztmesh/sa/envoy")
    event = log.events[-1]
    assert (event.decision_id, event.outcome, event.subject, event.resource) == (
        decision.decision_id, "ALLOW", "dr.ana", "patient_record/p-42",
    )  # fmt: skip
    assert event.caller_spiffe_id == "spiffe://ztmesh.local/ns/ztmesh/sa/envoy" and event.trace_id == "req-1"
    details = event.details
    assert details["policy_revision"] == decision.policy_revision and details["trust_score"] == decision.trust_score
    assert details["factors"] == {f.name: f.score for f in decision.factors}
    assert details["obligations"] == ["encrypt_transmission", "log_all_access"]
    engine.decide(physician(action=""))
    assert log.events[-1].outcome == "DENY" and log.events[-1].details["fault"] == "invalid_request"


def test_signals_and_bundle_changes_are_audited_too(make_engine, bundle_dir):
    """What decisions depend on is on the record: who lowered whose trust, which bundle came in or was
    refused, and at whose request."""
    from ztmesh.policy.errors import BundleError
    from ztmesh.policy.model import Signal

    log = EventLog()
    engine = make_engine(bundle_root=bundle_dir, audit=log)
    operator = "spiffe://ztmesh.local/ns/ztmesh/sa/client"
    score = engine.report_signal(Signal("dr.ana", "failed_login", 0.5, None, "idp"), caller=operator)
    signal = log.events[-1]
    assert (signal.action, signal.outcome, signal.subject, signal.caller_spiffe_id) == (
        "policy.signal", "OK", "dr.ana", operator,
    )  # fmt: skip
    assert signal.details["kind"] == "failed_login" and signal.details["behaviour_score"] == score

    old = engine.bundles.current.revision
    data = bundle_dir / "data.json"
    data.write_text(data.read_text().replace('"public": 30', '"public": 31'))
    engine.reload(caller=operator)
    loaded = log.events[-1]
    assert (loaded.action, loaded.outcome) == ("policy.bundle.load", "OK")
    assert loaded.details["previous"] == old and loaded.details["revision"] == engine.bundles.current.revision

    (bundle_dir / "authz.rego").write_text("package ztmesh.authz\n\ndecision := {")
    with pytest.raises(BundleError):
        engine.reload(caller=operator)
    refused = log.events[-1]
    assert (refused.action, refused.outcome, refused.caller_spiffe_id) == ("policy.bundle.load", "REFUSED", operator)
    assert "authz.rego" in refused.details["error"]


class BrokenAudit:
    def emit(self, event: object) -> None:
        raise OSError("spool disk full")


def test_no_durable_audit_record_means_deny(make_engine):
    decision = make_engine(audit=BrokenAudit()).decide(physician())
    assert (decision.outcome, decision.fault) == (Outcome.DENY, Fault.AUDIT_ERROR)
    assert decision.reasons == ("audit trail unavailable, decision not recorded: spool disk full",)


class ExplodingStore:
    def state(self, *args: object) -> object:
        raise ZeroDivisionError("a bug")

    def record(self, *args: object) -> int:
        raise ZeroDivisionError("a bug")

    def close(self) -> None:
        pass


def test_a_bug_is_a_deny_not_an_exception(make_engine):
    decision = make_engine(signals=ExplodingStore()).decide(physician())
    assert (decision.outcome, decision.fault, decision.reasons) == (
        Outcome.DENY, Fault.INTERNAL, ("internal error: ZeroDivisionError",),
    )  # fmt: skip


def test_opa_server_killed_mid_run_denies_with_a_reason(make_engine, opa_sidecar):
    server = opa_sidecar
    try:
        engine: PolicyEngine = make_engine(rego=server.engine(timeout_s=0.5))
        results: list[Any] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    results.append(engine.decide(physician()))
                except BaseException as exc:  # must never happen: recorded to fail the test
                    results.append(exc)

        worker = threading.Thread(target=load)
        worker.start()
        wait_until(lambda: any(getattr(r, "outcome", None) is Outcome.ALLOW for r in results), 30, "an ALLOW")
        server.stop()
        seen = len(results)
        wait_until(lambda: len(results) > seen + 5 and getattr(results[-1], "fault", None) is Fault.ENGINE_UNAVAILABLE,
                   30, "DENYs for the unreachable engine")  # fmt: skip
        stop.set()
        worker.join()
    finally:
        server.stop()
    assert all(not isinstance(r, BaseException) for r in results), [r for r in results if isinstance(r, BaseException)]
    outcomes = [(r.outcome, r.fault) for r in results]
    assert (Outcome.ALLOW, Fault.NONE) in outcomes
    assert outcomes[-1] == (Outcome.DENY, Fault.ENGINE_UNAVAILABLE)
    assert results[-1].reasons[0].startswith(f"policy engine unavailable: OPA at {server.url} unreachable")
    # Once down, never an ALLOW again.
    first_down = outcomes.index((Outcome.DENY, Fault.ENGINE_UNAVAILABLE))
    assert all(o == (Outcome.DENY, Fault.ENGINE_UNAVAILABLE) for o in outcomes[first_down:])


def test_opa_restarted_denies_then_serves_the_bundle_again(make_engine, opa_sidecar):
    engine = make_engine(rego=opa_sidecar.engine())
    assert engine.decide(physician()).outcome is Outcome.ALLOW
    opa_sidecar.stop()
    opa_sidecar.start()  # an empty OPA: it fetches the serving bundle from the policy service
    decisions = [engine.decide(physician())]
    deadline = time.monotonic() + 10
    while decisions[-1].outcome is not Outcome.ALLOW and time.monotonic() < deadline:
        time.sleep(0.05)
        decisions.append(engine.decide(physician()))
    assert decisions[-1].outcome is Outcome.ALLOW
    assert all((d.outcome, d.fault) == (Outcome.DENY, Fault.ENGINE_UNAVAILABLE) for d in decisions[:-1])
