"""Signals and the decision cache, in process and in a real Redis shared by two engines (replicas);
the cache never answers from before a signal or a reload; replicas hear of new revisions."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.policy.conftest import physician, with_resource
from ztmesh.policy.cache import MemoryDecisionCache, RedisDecisionCache
from ztmesh.policy.errors import SignalStoreFull, SignalStoreLost
from ztmesh.policy.model import Fault, Outcome, Signal
from ztmesh.policy.signals import MemorySignalStore, RecordedSignal, RedisSignalStore
from ztmesh.policy.watch import PolicyWatcher, RedisReloadNotifier


@pytest.fixture
def prefix() -> str:
    """A key prefix per test: the session's Redis is shared by every test."""
    return f"test:{uuid.uuid4().hex[:8]}:"


def _critical():
    return with_resource(physician(), classification="critical_patient_data")


def filled_store(url: str, prefix: str) -> RedisSignalStore:
    """A Redis signal store marked whole (a new deployment: its restore replays no signal)."""
    store = RedisSignalStore(url, prefix=prefix)
    store.restore([], {})
    return store


def test_two_replicas_share_signal_state_through_redis(make_engine, redis_url, prefix):
    a = make_engine(signals=filled_store(redis_url, prefix + "signals:"))
    b = make_engine(signals=RedisSignalStore(redis_url, prefix=prefix + "signals:"))
    assert a.decide(_critical()).outcome is Outcome.ALLOW
    a.report_signal(Signal("dr.ana", "impossible_travel"))
    from_b = b.decide(_critical())
    assert from_b.outcome is Outcome.CHALLENGE and from_b.trust_score == pytest.approx(91.3 - 12)
    b.report_signal(Signal("dr.ana", "anomaly"))
    assert a.decide(_critical()).trust_score == pytest.approx(91.3 - 12 - 6)
    state_a = a.signals.state("dr.ana", a.clock(), a.scorer.model.config.behaviour.half_lives)
    state_b = b.signals.state("dr.ana", b.clock(), b.scorer.model.config.behaviour.half_lives)
    assert state_a.version == state_b.version == 2  # decayed by Redis's clock, read a moment apart
    assert state_a.levels == pytest.approx(state_b.levels, rel=1e-4)  # a busy machine: reads ~1 s apart


def test_redis_and_memory_stores_decay_alike(redis_url, prefix):
    shared = filled_store(redis_url, prefix)
    memory = MemorySignalStore()
    half_lives = {"anomaly": 60.0, "failed_login": 10.0}
    t0 = shared.state("s", 0.0, half_lives).as_of  # Redis decays with its own clock: events relative to it
    events = [("anomaly", 1.0, t0 - 100.0), ("failed_login", 0.5, t0 - 95.0), ("anomaly", 0.3, t0 - 110.0),
              ("anomaly", 1.0, t0 - 40.0)]  # fmt: skip
    for store in (memory, shared):
        for kind, amount, at in events:
            store.record("s", kind, amount, half_lives[kind], now=t0, at=at)
    from_redis = shared.state("s", 0.0, half_lives)  # our clock (0.0) is not the one that decays
    from_memory = memory.state("s", from_redis.as_of, half_lives)
    assert from_memory.version == from_redis.version == 4
    assert from_memory.levels.keys() == from_redis.levels.keys()
    for kind, level in from_memory.levels.items():
        assert from_redis.levels[kind] == pytest.approx(level, rel=1e-9)


def test_memory_store_full_of_live_signals_refuses_new_subjects_and_keeps_the_old():
    store = MemorySignalStore(max_subjects=3)
    store.record("flagged", "malware_detected", 1.0, 7 * 86400.0, now=1000.0)
    store.record("a", "failed_login", 1.0, 1800.0, now=1000.0)
    store.record("b", "failed_login", 1.0, 1800.0, now=1000.0)
    with pytest.raises(SignalStoreFull, match="3 subjects.*ZTMESH_SIGNAL_MAX_SUBJECTS"):
        store.record("fresh", "failed_login", 1.0, 1800.0, now=1001.0)
    store.record("a", "anomaly", 1.0, 3600.0, now=1001.0)  # a known subject still takes signals
    # Once a's and b's failed logins are negligible (~13.3 half-lives) b can go; a's anomaly still counts.
    later = 1001.0 + 14 * 1800.0
    store.record("fresh", "failed_login", 1.0, 1800.0, now=later)
    assert store.subject_count() == 3
    assert store.state("flagged", later, {"malware_detected": 7 * 86400.0}).levels["malware_detected"] > 0.9
    assert store.state("a", later, {"anomaly": 3600.0}).levels


def test_a_redis_store_without_its_epoch_marker_is_lost_not_clean(redis_url, prefix):
    import redis

    store = filled_store(redis_url, prefix)
    store.record("dr.ana", "malware_detected", 1.0, 7 * 86400.0, now=0.0)
    redis.Redis.from_url(redis_url).delete(prefix + "epoch")  # what a restart without persistence leaves
    for attempt in (lambda: store.state("dr.ana", 0.0, {"malware_detected": 1.0}),
                    lambda: store.record("dr.ana", "anomaly", 1.0, 60.0, now=0.0)):  # fmt: skip
        with pytest.raises(SignalStoreLost, match="no epoch marker"):
            attempt()
    status = store.status(time.time())
    assert status.lost and not status.ready
    replayed = [RecordedSignal("dr.ana", "malware_detected", 1.0, time.time() - status.clock_skew_s - 60)]
    assert store.restore(replayed, {"malware_detected": 7 * 86400.0}) == 1
    assert store.status(time.time()).ready
    level = store.state("dr.ana", 0.0, {"malware_detected": 7 * 86400.0}).levels["malware_detected"]
    assert level == pytest.approx(1.0, abs=1e-3)  # replayed once: the stale hash was dropped, not added to


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
    engine.reload()
    fresh.reload()
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
    watch_a.start()
    watch_b.start()
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
        watch_a.stop()
        watch_b.stop()


def test_reload_notifications_start_late_and_survive_a_redis_restart(tmp_path):
    from tests.support.own_redis import OwnRedis
    from tests.support.processes import free_port

    server = OwnRedis(free_port(), tmp_path / "redis")  # not started yet: Redis down at start-up
    heard: list[str] = []
    listener = RedisReloadNotifier(server.url)
    listener.subscribe(heard.append)
    announcer = RedisReloadNotifier(server.url)

    def announced(revision: str) -> bool:
        deadline = time.monotonic() + 10
        while revision not in heard and time.monotonic() < deadline:
            announcer.publish(revision)  # a message published before the listener is back is lost
            time.sleep(0.1)
        return revision in heard

    try:
        server.start()
        assert announced("r1")
        server.stop()
        server.start()
        assert announced("r2")
    finally:
        listener.close()
        announcer.close()
        server.stop()


def test_a_redis_back_from_an_older_snapshot_is_detected_and_restored():
    """What a failover to a replica that lagged behind looks like: the marker is there, some signals
    are not. The counter of recorded signals went back, so the store reads as lost and is restored."""
    from tests.support.own_redis import own_redis

    malware = {"malware_detected": 7 * 86400.0}
    with own_redis() as server:  # no automatic snapshots: the test takes the one it needs
        store = RedisSignalStore(server.url)
        store.restore([], {})
        store.record("someone", "malware_detected", 1.0, malware["malware_detected"], now=0.0)
        server.client().save()  # the state the lagging replica has
        store.record("dr.ana", "malware_detected", 1.0, malware["malware_detected"], now=0.0)
        flagged_at = store.state("dr.ana", 0.0, malware).as_of
        server.stop()
        server.start()  # back from the older snapshot: dr.ana's flag is gone, the marker is not
        with pytest.raises(SignalStoreLost, match="went back in time: it holds 1 recorded signals where"):
            store.state("dr.ana", 0.0, malware)
        status = store.status(time.time())
        assert status.lost  # the marker was dropped, so every replica restores, not only this one
        trail = [RecordedSignal("someone", "malware_detected", 1.0, flagged_at),
                 RecordedSignal("dr.ana", "malware_detected", 1.0, flagged_at)]  # fmt: skip
        assert store.restore(trail, malware) == 2
        assert store.state("dr.ana", 0.0, malware).levels["malware_detected"] == pytest.approx(1.0, abs=1e-3)
        store.close()


def test_concurrent_reports_and_reads_never_look_like_a_rollback(redis_url, prefix):
    """Replies of one replica's threads arrive out of order (an older counter after a newer one):
    only a counter that is still lower in the store is a loss."""
    import threading

    store = filled_store(redis_url, prefix)
    half_lives = {"failed_login": 1800.0}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(150):
                if i % 3 == 0:
                    store.record(f"s{n}", "failed_login", 0.01, 1800.0, now=0.0)
                else:
                    store.state(f"s{(n + i) % 8}", 0.0, half_lives)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert store.status(time.time()).ready
    store.close()


def test_a_restore_replays_the_signals_whose_record_is_still_in_the_policy_spool(make_engine, tmp_path):
    """Audit was down when dr.ana was flagged: the flag is in Redis, its record only in the policy
    spool. Redis then loses its memory: the restore must replay the spooled record (the trail has none),
    or the flag is gone and dr.ana is allowed again."""
    import grpc

    from tests.support.own_redis import own_redis
    from tests.support.processes import free_port
    from ztmesh.audit.client import GrpcAuditSink
    from ztmesh.audit.spool import SpoolEmitter, SpoolSettings
    from ztmesh.policy.signal_recovery import SignalStoreMonitor, unshipped_signals

    channel = grpc.insecure_channel(f"127.0.0.1:{free_port()}")  # audit down: nothing listens there
    spool = tmp_path / "spool" / "policy"
    emitter = SpoolEmitter(GrpcAuditSink(channel, timeout=0.2), SpoolSettings(spool / "0", direct_timeout=0.2))
    with own_redis() as server:
        store = RedisSignalStore(server.url)
        store.restore([], {})
        engine = make_engine(signals=store, audit=emitter)
        half_lives = engine.scorer.model.config.behaviour.half_lives
        engine.report_signal(Signal("dr.ana", "malware_detected"))
        assert engine.decide(_critical()).outcome is Outcome.DENY
        server.client().flushall()
        lost = engine.decide(_critical())
        assert lost.outcome is Outcome.DENY and lost.fault is Fault.SIGNAL_STORE_ERROR
        trail: list[RecordedSignal] = []  # what audit holds: nothing, it was down

        def source(since: float):
            yield from trail
            yield from unshipped_signals(spool, since).values()

        monitor = SignalStoreMonitor(store, source, lambda: half_lives, max_skew_s=5.0)
        assert monitor.check_once().ready
        state = store.state("dr.ana", 0.0, half_lives)
        assert state.levels["malware_detected"] == pytest.approx(1.0, abs=1e-3)
        assert engine.decide(_critical()).outcome is Outcome.DENY
        store.close()
    emitter.close()
    channel.close()


def test_a_redis_restarted_with_its_data_forces_a_restore_even_when_a_record_masks_the_counter():
    """A failover to a replica that lacks signal #S looks like this: marker there, counter one lower,
    the flag gone. The next record brings the counter back to what this replica saw, so the counter
    alone sees nothing; Redis's identity (INFO run_id) changed, so the marker is dropped all the same."""
    from tests.support.own_redis import own_redis

    malware = {"malware_detected": 7 * 86400.0}
    with own_redis() as server:  # no automatic snapshots: the test takes the one it needs
        store = RedisSignalStore(server.url)
        store.restore([], {})
        store.record("someone", "malware_detected", 1.0, malware["malware_detected"], now=0.0)
        assert store.status(time.time()).ready
        server.client().save()  # what the lagging replica holds
        store.record("dr.ana", "malware_detected", 1.0, malware["malware_detected"], now=0.0)
        server.stop()
        server.start()  # another Redis process: the older data, with the marker
        assert server.client().exists("ztmesh:signals:epoch")
        store.record("someone else", "anomaly", 1.0, 3600.0, now=0.0)  # counter back at 2: not seen as a loss
        status = store.status(time.time())
        assert status.lost and not status.ready, status  # before: ready, and dr.ana's flag gone
        with pytest.raises(SignalStoreLost):
            store.state("dr.ana", 0.0, malware)
        at = time.time() - status.clock_skew_s
        assert store.restore([RecordedSignal("dr.ana", "malware_detected", 1.0, at)], malware) == 1
        assert store.status(time.time()).ready  # sealed on this Redis: it stays ready
        assert store.state("dr.ana", 0.0, malware).levels["malware_detected"] == pytest.approx(1.0, abs=1e-3)
        store.close()


@pytest.mark.parametrize("seen", ["policy seen", "only evictions seen"])
def test_a_redis_that_evicted_or_could_evict_is_restored_before_it_reads_ready_again(seen):
    """Setting noeviction back does not bring evicted signals back: the store must be restored."""
    from tests.support.own_redis import own_redis

    with own_redis() as server:
        client = server.client()
        store = RedisSignalStore(server.url)
        store.restore([], {})
        store.record("dr.ana", "malware_detected", 1.0, 7 * 86400.0, now=0.0)
        assert store.status(time.time()).ready
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 512 * 1024)
        client.config_set("maxmemory-policy", "allkeys-lru")
        if seen == "policy seen":  # a check while Redis may evict
            assert not store.status(time.time()).ready
        else:  # Redis evicts between two checks, which only ever see noeviction
            filler = client.pipeline(transaction=False)
            for i in range(64):
                filler.set(f"filler:{i}", b"x" * 32 * 1024)
            filler.execute()
            assert int(client.info("stats")["evicted_keys"]) > 0
        client.config_set("maxmemory-policy", "noeviction")
        status = store.status(time.time())
        assert status.lost and not status.ready, status  # before: ready again, evicted signals or not
        store.restore([], {})
        assert store.status(time.time()).ready  # the evictions before the seal are not counted again
        store.close()


def test_a_longer_half_life_after_a_reload_keeps_the_subjects_recorded_before_it(redis_url, prefix):
    """Expiries are computed when an event is recorded. A reload that makes a half-life longer (10 s ->
    1000 s) makes old events count for ~13 000 s more: their keys must not vanish at the old expiry,
    nor those a replica still on the old configuration records meanwhile."""
    import redis

    from ztmesh.policy.signal_recovery import SignalStoreMonitor

    client = redis.Redis.from_url(redis_url)
    store = filled_store(redis_url, prefix)
    half_lives = {"failed_login": 10.0}
    monitor = SignalStoreMonitor(store, None, lambda: half_lives, max_skew_s=5.0)
    assert monitor.check_once().ready
    store.record("dr.ana", "failed_login", 1.0, 10.0, now=0.0)
    assert client.ttl(prefix + "s:dr.ana") < 200  # 10 s x log2(1e4) + 60 s
    half_lives = {"failed_login": 1000.0}  # the trust reload
    assert monitor.check_once().ready
    assert client.ttl(prefix + "s:dr.ana") > 13_000  # before: still < 200, the level then ~0.9
    store.record("dr.bob", "failed_login", 1.0, 10.0, now=0.0)  # a replica still on the old configuration
    assert client.ttl(prefix + "s:dr.bob") > 13_000
    store.record("dr.ana", "failed_login", 1.0, 10.0, now=0.0)  # never shortened
    assert client.ttl(prefix + "s:dr.ana") > 13_000
    memory = MemorySignalStore(max_subjects=1)
    memory.record("dr.ana", "failed_login", 1.0, 10.0, now=0.0)
    assert memory.keep_for({"failed_login": 1000.0}) == 1
    with pytest.raises(SignalStoreFull):  # at 1000 s dr.ana's level still counts: no room made from it
        memory.record("dr.bob", "failed_login", 1.0, 1000.0, now=500.0)
    store.close()
