"""Signals and the decision cache, in process and in a real Redis shared by two engines (replicas);
the cache never answers from before a signal or a reload; replicas hear of new revisions."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.policy.conftest import physician, with_resource
from ztmesh.policy.cache import MemoryDecisionCache, RedisDecisionCache
from ztmesh.policy.model import Fault, Outcome, Signal
from ztmesh.policy.signals import MemorySignalStore, RedisSignalStore
from ztmesh.policy.watch import PolicyWatcher, RedisReloadNotifier


@pytest.fixture
def prefix() -> str:
    """A key prefix per test: the session's Redis is shared by every test."""
    return f"test:{uuid.uuid4().hex[:8]}:"


def _critical():
    return with_resource(physician(), classification="critical_patient_data")


def test_two_replicas_share_signal_state_through_redis(make_engine, redis_url, prefix):
    a = make_engine(signals=RedisSignalStore(redis_url, prefix=prefix + "signals:"))
    b = make_engine(signals=RedisSignalStore(redis_url, prefix=prefix + "signals:"))
    assert a.decide(_critical()).outcome is Outcome.ALLOW
    a.report_signal(Signal("dr.ana", "impossible_travel"))
    from_b = b.decide(_critical())
    assert from_b.outcome is Outcome.CHALLENGE and from_b.trust_score == pytest.approx(91.3 - 12)
    b.report_signal(Signal("dr.ana", "anomaly"))
    assert a.decide(_critical()).trust_score == pytest.approx(91.3 - 12 - 6)
    state_a = a.signals.state("dr.ana", a.clock(), a.scorer.model.config.behaviour.half_lives)
    state_b = b.signals.state("dr.ana", b.clock(), b.scorer.model.config.behaviour.half_lives)
    assert state_a == state_b and state_a.version == 2


def test_redis_and_memory_stores_decay_alike(redis_url, prefix):
    stores = [MemorySignalStore(), RedisSignalStore(redis_url, prefix=prefix)]
    half_lives = {"anomaly": 60.0, "failed_login": 10.0}
    events = [
        ("anomaly", 1.0, 1000.0),
        ("failed_login", 0.5, 1005.0),
        ("anomaly", 0.3, 990.0),
        ("anomaly", 1.0, 1060.0),
    ]
    for store in stores:
        for kind, amount, at in events:
            store.record("s", kind, amount, at, half_lives[kind])
    memory, shared = (store.state("s", 1100.0, half_lives) for store in stores)
    assert memory.version == shared.version == 4
    assert memory.levels.keys() == shared.levels.keys()
    for kind, level in memory.levels.items():
        assert shared.levels[kind] == pytest.approx(level, rel=1e-12)


def test_unreachable_redis_fails_closed(make_engine):
    engine = make_engine(signals=RedisSignalStore("redis://127.0.0.1:1/0"))
    decision = engine.decide(physician())
    assert decision.outcome is Outcome.DENY and decision.fault is Fault.SIGNAL_STORE_ERROR
    assert decision.reasons[0].startswith("signal store unavailable: redis: cannot read signals of 'dr.ana'")


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_cache_is_never_stale_after_a_signal_or_a_reload(make_engine, bundle_dir, redis_url, prefix, kind):
    cache = MemoryDecisionCache() if kind == "memory" else RedisDecisionCache(redis_url, prefix=prefix)
    engine = make_engine(bundle_root=bundle_dir, cache=cache)
    fresh = make_engine(bundle_root=bundle_dir)  # the same engine without a cache: the truth

    def check() -> object:
        cached, truth = engine.decide(_critical()), fresh.decide(_critical())
        assert (cached.outcome, cached.reasons, cached.obligations, cached.step_up, cached.policy_revision) == (
            truth.outcome, truth.reasons, truth.obligations, truth.step_up, truth.policy_revision,
        )  # fmt: skip
        return cached

    assert not check().cached
    assert check().cached  # the same request again: answered from the cache
    engine.report_signal(Signal("dr.ana", "impossible_travel"))
    fresh.report_signal(Signal("dr.ana", "impossible_travel"))
    after_signal = check()
    assert not after_signal.cached and after_signal.outcome is Outcome.CHALLENGE
    assert check().cached
    for name in ("data.json", "authz_test.rego"):  # a new step-up, and the pack's test that says so
        path = bundle_dir / name
        path.write_text(path.read_text().replace("supervisor_approval", "second_opinion"))
    engine.reload(), fresh.reload()
    after_reload = check()
    assert not after_reload.cached and after_reload.step_up == ("mfa", "second_opinion")


def test_redis_cache_is_shared_by_replicas(make_engine, redis_url, prefix):
    a = make_engine(cache=RedisDecisionCache(redis_url, prefix=prefix))
    b = make_engine(cache=RedisDecisionCache(redis_url, prefix=prefix))
    first = a.decide(physician())
    second = b.decide(physician())
    assert not first.cached and second.cached and second.reasons == first.reasons
    assert second.decision_id != first.decision_id  # a cached answer is still a decision of its own


def test_unreachable_cache_is_a_miss_not_a_failure(make_engine):
    engine = make_engine(cache=RedisDecisionCache("redis://127.0.0.1:1/0"))
    decision = engine.decide(physician())
    assert decision.outcome is Outcome.ALLOW and not decision.cached


def test_replicas_hear_of_a_new_revision_through_redis(make_engine, bundle_dir: Path, redis_url, prefix):
    a, b = make_engine(bundle_root=bundle_dir), make_engine(bundle_root=bundle_dir)
    channel = prefix + "reload"
    watch_a = PolicyWatcher(a, interval_s=3600, notifier=RedisReloadNotifier(redis_url, channel))
    watch_b = PolicyWatcher(b, interval_s=3600, notifier=RedisReloadNotifier(redis_url, channel))
    watch_a.start(), watch_b.start()
    try:
        time.sleep(0.3)  # let both subscriptions settle
        data = bundle_dir / "data.json"
        data.write_text(data.read_text().replace('"obligations": {', '"obligations": {"confidential": ["watermark"], '))
        watch_a.check_once()  # A notices the change (its poll), loads it and announces it
        assert a.bundles.current.revision != b.bundles.current.revision or a.bundles.current.revision
        deadline = time.monotonic() + 10
        while b.bundles.current.revision != a.bundles.current.revision and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.bundles.current.revision == a.bundles.current.revision  # B did not poll: it was told
    finally:
        watch_a.stop(), watch_b.stop()
