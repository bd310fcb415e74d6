"""Fault: one policy replica's clock runs 14 days ahead (injected into the core, the system clock is
left alone). Decay uses the shared store's clock (Redis TIME), so that replica still DENYs a subject
flagged `malware_detected` (7-day half-life) as the others do; the skew is measured, logged and
exported as a metric. Two PolicyEngines on a real Redis, as two replicas would be."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.security.test_signal_reporters import physician
from tests.support.audited_policy import REPO
from tests.support.mesh import Pki, settings_for
from tests.support.own_redis import OwnRedis, own_redis
from ztmesh.mesh.auditing import AuditEvent
from ztmesh.policy.app import build_engine
from ztmesh.policy.decider import PolicyEngine
from ztmesh.policy.model import Outcome, Signal
from ztmesh.policy.servicer import request_from_proto
from ztmesh.policy.settings import PolicySettings
from ztmesh.policy.signal_recovery import SignalStoreMonitor

FOURTEEN_DAYS = 14 * 86400.0
OPERATOR = "spiffe://ztmesh.local/ns/ztmesh/sa/client"


class Trail:
    """Where these engines' audit events go: this test is about decay, not the audit path."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.fixture
def store() -> Iterator[OwnRedis]:
    with own_redis() as server:
        yield server


def _replica(pki: Pki, tmp_path: Any, url: str, clock_offset: float) -> PolicyEngine:
    settings = settings_for(pki, tmp_path, redis_url=url, dev_mode=True)  # the shipped pack is not signed
    files = REPO / "policies"
    policy = PolicySettings(files / "rego", files / "trust" / "weights.json", files / "threat",
                            policy_signing_required=False)  # fmt: skip
    engine = build_engine(settings, policy, Trail())
    engine.clock = lambda: time.time() + clock_offset
    return engine


def test_a_replica_far_ahead_still_denies_a_flagged_subject_and_reports_its_skew(pki, tmp_path, store):
    right = _replica(pki, tmp_path / "a", store.url, 0.0)
    ahead = _replica(pki, tmp_path / "b", store.url, FOURTEEN_DAYS)
    right.signals.restore([], {})  # a new deployment: the empty store is whole
    request = request_from_proto(physician())
    assert ahead.decide(request).outcome is Outcome.ALLOW
    right.report_signal(Signal("dr.ana", "malware_detected"), caller=OPERATOR)

    for replica in (right, ahead):
        decision = replica.decide(request)
        assert decision.outcome is Outcome.DENY, decision.reasons
        assert {f.name: f.score for f in decision.factors}["behaviour"] == 0.0  # the flag at full strength

    half_lives = ahead.scorer.model.config.behaviour.half_lives
    monitor = SignalStoreMonitor(ahead.signals, None, lambda: half_lives, max_skew_s=2.0, clock=ahead.clock)
    logger = logging.getLogger("ztmesh.policy.signals")  # a handler of our own: whatever the root's are
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        status = monitor.check_once()
        skew = REGISTRY.get_sample_value("ztmesh_policy_signal_clock_skew_seconds")
    finally:
        logger.removeHandler(handler)
    assert status.ready and status.clock_skew_s == pytest.approx(FOURTEEN_DAYS, abs=5.0)
    reported = [float(m.group(1)) for r in records if "ZTMESH_SIGNAL_MAX_CLOCK_SKEW" in r.getMessage()
                for m in [re.search(r"clock is ([+-][0-9.]+) s", r.getMessage())] if m]  # fmt: skip
    assert reported and reported[0] == pytest.approx(FOURTEEN_DAYS, abs=5.0)  # measured: +1209599.998 is fine
    assert skew == pytest.approx(FOURTEEN_DAYS, abs=5.0)
    print(f"\nreplica 14 days ahead: DENY, skew reported {status.clock_skew_s:+.1f} s")
    for replica in (right, ahead):
        replica.signals.close()
        replica.engine.close()
