"""Behaviour signals per subject (failed logins, anomalies, impossible travel...) with exponential
decay, behind one seam: in-process for a single replica, Redis for replicas that must agree.

Each (subject, kind) keeps a decayed running sum with the time it refers to: a new event at t adds
its severity to the sum decayed to t; a read decays the sum to now. So the state is O(kinds) per
subject whatever the number of events, and the answer does not depend on when it is read.
A per-subject version counts the signals, so a cached decision can be keyed on it.

Signals only ever lower trust, so a store must never forget one that still counts: state is kept
until every level has decayed below NEGLIGIBLE, a full store refuses new subjects (SignalStoreFull),
and a store that lost its memory reads as an error (SignalStoreLost), never as a clean record. The
Redis store decays with Redis's own clock (TIME), so every replica computes the same levels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ztmesh.policy.errors import SignalStoreError, SignalStoreFull, SignalStoreLost

NEGLIGIBLE = 1e-4  # a decayed level below this no longer counts (nor is it kept)
log = logging.getLogger("ztmesh.policy.signals")


@dataclass(frozen=True, slots=True)
class BehaviourState:
    """A subject's signal state at one instant: decayed severity sums per kind, and the version."""

    version: int
    levels: Mapping[str, float]
    as_of: float = 0.0  # the instant (store clock, seconds since the epoch) the levels are decayed to


EMPTY = BehaviourState(0, {})


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Whether the store can be trusted to hold every live signal, and how far our clock is from its."""

    ready: bool
    problem: str = ""  # why not ready, for logs, health and the DENY reason
    clock_skew_s: float = 0.0  # this replica's clock minus the store's clock
    lost: bool = False  # reachable, but it lost its memory: restore it (SignalStore.restore)


@dataclass(frozen=True, slots=True)
class RecordedSignal:
    """A signal as it was recorded (e.g. read back from the audit trail), to replay into a store."""

    subject_id: str
    kind: str
    amount: float
    at: float


def decayed(value: float, since: float, now: float, half_life: float) -> float:
    if now <= since:
        return value
    return value * 2.0 ** (-(now - since) / half_life)


def add_event(value: float, ref: float, amount: float, at: float, half_life: float) -> tuple[float, float]:
    """Add `amount` happening at `at` to a sum `value` referring to time `ref`; return the new (sum, ref)."""
    if at >= ref:
        return decayed(value, ref, at, half_life) + amount, at
    return value + decayed(amount, at, ref, half_life), ref  # a late report of an older event


def negligible_after(value: float, ref: float, half_life: float) -> float:
    """The instant a sum `value` at `ref` decays below NEGLIGIBLE: until then it must be kept."""
    if value <= NEGLIGIBLE:
        return ref
    return ref + half_life * math.log2(value / NEGLIGIBLE)


def replay_span(half_lives: Mapping[str, float]) -> float:
    """How far back signals can still count: a sum of up to 100 full-severity events of the
    longest-lived kind takes this long to become negligible."""
    return max(half_lives.values(), default=0.0) * math.log2(100.0 / NEGLIGIBLE)


class SignalStore(Protocol):
    def record(
        self, subject_id: str, kind: str, amount: float, half_life: float, now: float, at: float | None = None
    ) -> int:
        """Add an event of severity `amount` that happened at `at` (seconds since the epoch; None = now).
        `now` is the caller's clock; a store with a clock of its own uses that one. Return the new
        version. SignalStoreFull if the store has no room for a new subject, SignalStoreLost if it
        lost its memory, SignalStoreError if it fails."""
        ...

    def state(self, subject_id: str, now: float, half_lives: Mapping[str, float]) -> BehaviourState:
        """The subject's levels decayed to now (the store's clock if it has one, else `now`); kinds
        missing from `half_lives` are ignored. SignalStoreLost / SignalStoreError as above."""
        ...

    def status(self, now: float) -> StoreStatus:
        """Ready or not (and why), and the clock skew; never raises."""
        ...

    def restore(self, signals: Iterable[RecordedSignal], half_lives: Mapping[str, float]) -> int:
        """Replay recorded signals into a store that lost its memory, then mark it whole again.
        Return the number replayed (0 if the store was whole already)."""
        ...

    def keep_for(self, half_lives: Mapping[str, float]) -> int:
        """Keep every subject until its levels are negligible by these half-lives (a reload may have
        made one longer than the one its events were recorded with). Return the subjects extended."""
        ...

    def close(self) -> None: ...


class MemorySignalStore:
    """Process-local signal state: the embedded default, for a single replica (whose clock is the
    only one). At `max_subjects` only fully decayed subjects make room; otherwise it is full."""

    in_process = True  # no I/O: a decision on the serving loop may use it there (PolicyEngine.decides_on_loop)

    def __init__(self, max_subjects: int = 100_000) -> None:
        self._max = max_subjects
        # subject -> (version, {kind: (sum, ref_time)}, negligible_after); the tuple is replaced
        # whole, so a reader never sees a version that does not belong to its levels.
        self._subjects: dict[str, tuple[int, dict[str, tuple[float, float]], float]] = {}
        self._soonest = math.inf  # no subject becomes negligible before this: a full store's fast path
        self._lock = threading.Lock()

    def record(
        self, subject_id: str, kind: str, amount: float, half_life: float, now: float, at: float | None = None
    ) -> int:
        at = now if at is None else min(at, now)  # an event cannot be younger than now
        kinds: dict[str, tuple[float, float]]
        with self._lock:
            entry = self._subjects.get(subject_id)
            if entry is None:
                if len(self._subjects) >= self._max and not self._sweep(now):
                    raise SignalStoreFull(
                        f"signal store full: {self._max} subjects have signals that still count "
                        f"(ZTMESH_SIGNAL_MAX_SUBJECTS); no signal about a new subject is taken until some decay"
                    )
                version, kinds, until = 0, {}, 0.0
            else:
                version, kinds, until = entry
            value, ref = add_event(*kinds.get(kind, (0.0, at)), amount, at, half_life)
            until = max(until, negligible_after(value, ref, half_life))
            self._subjects[subject_id] = (version + 1, {**kinds, kind: (value, ref)}, until)
            self._soonest = min(self._soonest, until)
            return version + 1

    def _sweep(self, now: float) -> bool:
        """Drop the subjects whose every level has decayed away; True if that freed room."""
        if now < self._soonest:
            return False
        quiet = [s for s, (_, _, until) in self._subjects.items() if until <= now]
        for subject in quiet:
            del self._subjects[subject]
        self._soonest = min((until for _, _, until in self._subjects.values()), default=math.inf)
        return bool(quiet)

    def state(self, subject_id: str, now: float, half_lives: Mapping[str, float]) -> BehaviourState:
        entry = self._subjects.get(subject_id)
        if entry is None:
            return BehaviourState(0, {}, now)
        version, kinds, _ = entry
        levels = {}
        for kind, (value, ref) in kinds.items():
            half_life = half_lives.get(kind)
            if half_life is not None:
                level = decayed(value, ref, now, half_life)
                if level >= NEGLIGIBLE:
                    levels[kind] = level
        return BehaviourState(version, levels, now)

    def status(self, now: float) -> StoreStatus:
        return StoreStatus(True)

    def restore(self, signals: Iterable[RecordedSignal], half_lives: Mapping[str, float]) -> int:
        count = 0
        for signal in signals:
            half_life = half_lives.get(signal.kind)
            if half_life is not None:
                self.record(signal.subject_id, signal.kind, signal.amount, half_life, time.time(), signal.at)
                count += 1
        return count

    def keep_for(self, half_lives: Mapping[str, float]) -> int:
        extended = 0
        with self._lock:
            for subject, (version, kinds, until) in list(self._subjects.items()):
                longest = max(
                    (negligible_after(v, ref, half_lives[k]) for k, (v, ref) in kinds.items() if k in half_lives),
                    default=until,
                )
                if longest > until:
                    self._subjects[subject] = (version, kinds, longest)
                    extended += 1
        return extended

    def subject_count(self) -> int:
        # Not __len__: an empty store would be falsy, and `store or MemorySignalStore()` would replace it.
        return len(self._subjects)

    def close(self) -> None:
        pass


# The epoch marker (KEYS[2] below) is written only once the store is known to hold every signal
# that counts: after a restore from the audit trail (which, for a new deployment, replays nothing).
# Redis that restarted empty, failed over to an empty replica or was flushed has no marker, and a
# missing marker reads as "memory lost", never as a clean history. A counter of recorded signals
# (KEYS[3]) only grows within an epoch: a replica that sees it go back (a failover to a replica that
# lagged behind, a restart from an older snapshot) knows signals were lost, and drops the marker.
_NO_EPOCH = "ZTMESH_NO_EPOCH"

# KEYS[1]: the subject's hash, KEYS[2]: the epoch marker, KEYS[3]: the counter. Returns {epoch|nil,
# seconds, microseconds, hash fields, counter}: state and the store's clock in one round trip, so
# decay uses one clock for all.
_READ = """
local t = redis.call('TIME')
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {false, t[1], t[2]} end
return {epoch, t[1], t[2], redis.call('HGETALL', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

# KEYS as above, KEYS[4]: the half-lives expiries are kept for (see keep_for). ARGV: kind, amount,
# at ('' = now), half_life, negligible, replay ('1' while restoring). Returns {version, counter,
# epoch|nil}. Runs atomically, so concurrent reports from several replicas never lose an event. The
# hash lives until its longest-lived level is negligible (field x) by the longer of our half-life
# and the kept one, never less. TIME in a script is safe: Redis 7 replicates a script's effects.
_RECORD = (
    """
redis.replicate_commands()  -- Redis < 7: writes after TIME need effects replication (7: always on)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if ARGV[6] ~= '1' and not redis.call('GET', KEYS[2]) then
  return redis.error_reply('"""
    + _NO_EPOCH
    + """ the signal store has no epoch marker')
end
local kind, amount, half_life, negligible = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local at = now
if ARGV[3] ~= '' then at = math.min(tonumber(ARGV[3]), now) end
local value = tonumber(redis.call('HGET', KEYS[1], 'v:' .. kind) or '0')
local ref = tonumber(redis.call('HGET', KEYS[1], 't:' .. kind) or tostring(at))
if at >= ref then
  value = value * math.pow(2, -(at - ref) / half_life) + amount
  ref = at
else
  value = value + amount * math.pow(2, -(ref - at) / half_life)
end
local until_ = ref
local keep = math.max(half_life, tonumber(redis.call('HGET', KEYS[4], kind) or '0'))  -- a replica on an older config
if value > negligible then until_ = ref + keep * math.log(value / negligible) / math.log(2) end
local old = tonumber(redis.call('HGET', KEYS[1], 'x') or '0')
if old > until_ then until_ = old end
redis.call('HSET', KEYS[1], 'v:' .. kind, string.format('%.17g', value), 't:' .. kind, string.format('%.17g', ref),
           'x', string.format('%.17g', until_))
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIREAT', KEYS[1], math.ceil(until_) + 60)
return {version, redis.call('INCR', KEYS[3]), redis.call('GET', KEYS[2])}
"""
)

# KEYS[1]: the epoch marker, KEYS[2]: the restore lock, KEYS[3]/KEYS[4]: Redis's identity and its
# evicted_keys at the seal (see _WATCH). ARGV: lock token, new epoch, identity, evicted ('' = INFO not
# allowed). The marker is set only if our lock survived the replay: a flush meanwhile took the lock
# too, and the replayed state with it.
_SEAL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) redis.call('SET', KEYS[4], ARGV[4]) end
return 1
"""

# The counter cannot see every loss: after a failover to a replica that lacks signal #S the next
# record brings it back to S. So the store also keeps which Redis it was sealed on (INFO run_id and
# master_replid: a restart, a failover or a resync from another master changes them, and a promoted
# replica holds its old master's) and how many keys Redis had evicted. KEYS: the epoch marker, the
# identity and evicted count at the seal. ARGV: identity now, evicted_keys now, '1' if Redis may
# evict (maxmemory with a policy other than noeviction). Drops the marker, so every replica sees the
# store lost and it is restored, if Redis is another one, evicted keys, or may evict; returns why
# (0: whole). A marker sealed before identities were kept adopts the current one.
_WATCH = """
if not redis.call('GET', KEYS[1]) then return 0 end
local identity = redis.call('GET', KEYS[2])
local evicted = tonumber(redis.call('GET', KEYS[3]) or ARGV[2])
local why = 0
if ARGV[3] == '1' then why = 3
elseif identity and identity ~= ARGV[1] then why = 1
elseif tonumber(ARGV[2]) > evicted then why = 2 end
if why ~= 0 then redis.call('DEL', KEYS[1]) return why end
if not identity then redis.call('SET', KEYS[2], ARGV[1]) end
if not redis.call('GET', KEYS[3]) or tonumber(ARGV[2]) < evicted then redis.call('SET', KEYS[3], ARGV[2]) end
return 0
"""
_WATCH_REASONS = {
    1: "redis is not the one the signals were restored on (restart, failover, resync: INFO run_id/master_replid)",
    2: "redis evicted keys (INFO evicted_keys grew): signals may be among them",
    3: "redis may evict keys (maxmemory-policy other than noeviction)",
}

# KEYS[1]: a subject's hash. ARGV: kind, half-life pairs, then negligible. Its expiry as if its
# events had been recorded with these half-lives, if that is later; never creates the hash.
_KEEP = """
local x = tonumber(redis.call('HGET', KEYS[1], 'x') or '0')
local negligible = tonumber(ARGV[#ARGV])
local until_ = x
for i = 1, #ARGV - 1, 2 do
  local v = tonumber(redis.call('HGET', KEYS[1], 'v:' .. ARGV[i]) or '0')
  local t = tonumber(redis.call('HGET', KEYS[1], 't:' .. ARGV[i]) or '0')
  if v > negligible then
    until_ = math.max(until_, t + tonumber(ARGV[i + 1]) * math.log(v / negligible) / math.log(2))
  end
end
if until_ <= x then return 0 end
redis.call('HSET', KEYS[1], 'x', string.format('%.17g', until_))
redis.call('EXPIREAT', KEYS[1], math.ceil(until_) + 60)
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""  # also drops an epoch marker, if it is still the one that went back in time

_REPLAY_BATCH = 500
_LOCK_TTL_MS = 120_000  # a restore that dies leaves the lock to expire; a live one refreshes it


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSignalStore:
    """Signal state in Redis, shared by every policy replica: one hash per subject, an epoch marker."""

    def __init__(self, url: str, prefix: str = "ztmesh:signals:", client: Any = None) -> None:
        import redis

        self._redis = client or redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._subjects = prefix + "s:"
        self._epoch_key = prefix + "epoch"
        self._lock_key = prefix + "restore"
        self._count_key = prefix + "count"
        self._identity_key = prefix + "identity"
        self._evicted_key = prefix + "evicted"
        self._kept_key = prefix + "kept"  # kind -> the longest half-life subject expiries are kept for
        self._seen: tuple[bytes, int] = (b"", 0)  # (epoch, highest counter) this replica has seen
        self._seen_lock = threading.Lock()
        self._read = self._redis.register_script(_READ)
        self._record = self._redis.register_script(_RECORD)
        self._seal = self._redis.register_script(_SEAL)
        self._release = self._redis.register_script(_RELEASE)
        self._watch = self._redis.register_script(_WATCH)
        self._keep = self._redis.register_script(_KEEP)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._out_of_memory: type[BaseException] = redis.exceptions.OutOfMemoryError
        self._eviction_problem = ""  # set when Redis may evict our keys (see _check_redis)
        self._persistence_checked = False

    def _lost(self) -> SignalStoreLost:
        return SignalStoreLost(
            f"redis has no epoch marker ({self._epoch_key}): the signal store lost its memory (restart "
            "without persistence, failover to an empty replica, flush) or was never filled; restoring "
            "the signals from the audit trail"
        )

    def record(
        self, subject_id: str, kind: str, amount: float, half_life: float, now: float, at: float | None = None
    ) -> int:
        if self._eviction_problem:
            raise SignalStoreError(self._eviction_problem)
        args: list[str | int] = [
            kind,
            repr(amount),
            "" if at is None else repr(at),
            repr(half_life),
            repr(NEGLIGIBLE),
            0,
        ]
        try:
            version, count, epoch = self._record(keys=self._keys(subject_id), args=args)
        except self._out_of_memory as exc:
            raise SignalStoreFull(
                f"signal store full: redis refuses writes at its maxmemory ({exc}); no signal is taken "
                "until memory is freed or raised (maxmemory-policy noeviction keeps live signals)"
            ) from exc
        except self._errors as exc:
            if _NO_EPOCH in str(exc):
                raise self._lost() from None
            raise SignalStoreError(f"redis: cannot record signal for {subject_id!r}: {exc}") from exc
        self._observe(epoch, int(count))
        return int(version)

    def _keys(self, subject_id: str) -> list[str]:
        return [self._subjects + subject_id, self._epoch_key, self._count_key, self._kept_key]

    def _observe(self, epoch: bytes | None, count: int) -> None:
        """SignalStoreLost if the counter went back within the epoch we know (signals were lost)."""
        if epoch is None:
            raise self._lost()
        with self._seen_lock:
            seen_epoch, seen = self._seen
            if epoch != seen_epoch or count >= seen:
                self._seen = (epoch, max(seen, count) if epoch == seen_epoch else count)
                return
        # A lower count may only be an older reply overtaken by a newer one of another thread: the
        # store's counter now says whether it really went back.
        try:
            now_epoch, now_count = self._redis.mget(self._epoch_key, self._count_key)
        except self._errors as exc:
            raise SignalStoreError(f"redis: cannot read the signal counter: {exc}") from exc
        if now_epoch == epoch and int(now_count or 0) >= seen:
            return
        if now_epoch == epoch:
            with contextlib.suppress(*self._errors):  # every replica then sees the marker gone: restore
                self._release(keys=[self._epoch_key], args=[epoch])
        raise SignalStoreLost(
            f"redis went back in time: it holds {count} recorded signals where this replica saw {seen} "
            "(failover to a replica that lagged behind, restart from an older snapshot); restoring the "
            "signals from the audit trail"
        )

    def state(self, subject_id: str, now: float, half_lives: Mapping[str, float]) -> BehaviourState:
        if self._eviction_problem:
            raise SignalStoreError(self._eviction_problem)
        try:
            reply = self._read(keys=self._keys(subject_id))
        except self._errors as exc:
            raise SignalStoreError(f"redis: cannot read signals of {subject_id!r}: {exc}") from exc
        self._observe(reply[0], int(reply[4]) if len(reply) > 4 else 0)
        store_now = int(reply[1]) + int(reply[2]) / 1e6
        raw = reply[3]
        fields = {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw), 2)}
        levels = {}
        for name, value in fields.items():
            if not name.startswith("v:"):
                continue
            kind = name[2:]
            half_life = half_lives.get(kind)
            if half_life is None:
                continue
            level = decayed(float(value), float(fields.get("t:" + kind, store_now)), store_now, half_life)
            if level >= NEGLIGIBLE:
                levels[kind] = level
        return BehaviourState(int(fields.get("version", "0")), levels, store_now)

    def status(self, now: float) -> StoreStatus:
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.time()
            pipe.exists(self._epoch_key)
            (seconds, micros), has_epoch = pipe.execute()  # TIME first: the skew is to `now`
            if self._check_redis():
                has_epoch = False
        except self._errors as exc:
            return StoreStatus(False, f"redis unreachable: {exc}")
        skew = now - (seconds + micros / 1e6)
        if self._eviction_problem:
            return StoreStatus(False, self._eviction_problem, skew)
        if not has_epoch:
            return StoreStatus(False, str(self._lost()), skew, lost=True)
        return StoreStatus(True, "", skew)

    def _redis_now(self) -> tuple[dict[str, Any], str, int] | None:
        """INFO, Redis's identity (run_id/master_replid) and evicted_keys; None if INFO is not allowed
        to our user (managed Redis): then none of this can be told."""
        import redis

        try:
            info = self._redis.info()
        except redis.ResponseError:
            return None
        identity = f"{info.get('run_id', '')}/{info.get('master_replid', '')}"
        return info, identity, int(info.get("evicted_keys", 0))

    def _check_redis(self) -> bool:
        """A Redis at its maxmemory that evicts keys would silently drop live signals: refuse it. One
        that evicted keys, may evict them, or is not the one the store was sealed on (see _WATCH) may
        lack signals: drop the marker, so that the store is restored. True if it dropped it."""
        now = self._redis_now()
        if now is None:
            return False
        info, identity, evicted = now
        if not self._persistence_checked:
            self._persistence_checked = True
            if not int(info.get("aof_enabled", 0)):
                log.warning(
                    "redis keeps signals without an append-only file: a restart empties it (appendonly yes "
                    "keeps them; a restart is still followed by a restore from the audit trail, DENY meanwhile)"
                )
        maxmemory = int(info.get("maxmemory", 0))
        policy = str(info.get("maxmemory_policy", "noeviction"))
        evicting = bool(maxmemory) and policy != "noeviction"
        self._eviction_problem = (
            f"redis maxmemory-policy is {policy} with maxmemory {maxmemory}: it may evict signals that still "
            "count; set maxmemory-policy noeviction"
            if evicting
            else ""
        )
        keys = [self._epoch_key, self._identity_key, self._evicted_key]
        try:
            why = int(self._watch(keys=keys, args=[identity, evicted, int(evicting)]))
        except self._out_of_memory:  # at maxmemory (noeviction) it cannot adopt a baseline yet: next time
            return False
        if why:
            log.error("signal store epoch dropped, signals restored from the audit trail: %s", _WATCH_REASONS[why])
        return bool(why)

    def restore(self, signals: Iterable[RecordedSignal], half_lives: Mapping[str, float]) -> int:
        token = uuid.uuid4().hex
        sealed = False
        try:
            if self._redis.exists(self._epoch_key):
                return 0
            if not self._redis.set(self._lock_key, token, nx=True, px=_LOCK_TTL_MS):
                raise SignalStoreError("another replica is restoring the signal store")
            # Keys left without a marker (e.g. only the marker was deleted) would count twice.
            stale = [*self._redis.scan_iter(match=self._subjects + "*", count=1000), self._count_key,
                     self._identity_key, self._evicted_key]  # fmt: skip
            for i in range(0, len(stale), _REPLAY_BATCH):
                self._redis.delete(*stale[i : i + _REPLAY_BATCH])
            count = 0
            pipe = self._redis.pipeline(transaction=False)
            for signal in signals:
                half_life = half_lives.get(signal.kind)
                if half_life is None:
                    continue
                args: list[str | int] = [signal.kind, repr(signal.amount), repr(signal.at), repr(half_life),
                                         repr(NEGLIGIBLE), 1]  # fmt: skip
                self._record(keys=self._keys(signal.subject_id), args=args, client=pipe)
                count += 1
                if count % _REPLAY_BATCH == 0:
                    pipe.pexpire(self._lock_key, _LOCK_TTL_MS)
                    pipe.execute()
            pipe.execute()
            _, identity, evicted = self._redis_now() or (None, "", 0)
            keys = [self._epoch_key, self._lock_key, self._identity_key, self._evicted_key]
            sealed = bool(self._seal(keys=keys, args=[token, uuid.uuid4().hex, identity, evicted]))
            if not sealed:
                raise SignalStoreLost("the signal store lost its memory again while it was being restored")
            return count
        except self._errors as exc:
            raise SignalStoreError(f"redis: cannot restore signals: {exc}") from exc
        finally:
            if not sealed:
                with contextlib.suppress(*self._errors):  # else the lock expires on its own
                    self._release(keys=[self._lock_key], args=[token])

    def keep_for(self, half_lives: Mapping[str, float]) -> int:
        """Extend the subjects' expiries for half-lives longer than those they are kept for (one scan
        of the subjects, by the first replica to see them; later records use them too)."""
        try:
            kept = {_text(k): float(v) for k, v in self._redis.hgetall(self._kept_key).items()}
            longer = {kind: h for kind, h in half_lives.items() if h > kept.get(kind, 0.0)}
            if not longer:
                return 0
            args: list[str] = [item for kind, h in longer.items() for item in (kind, repr(h))] + [repr(NEGLIGIBLE)]
            extended = 0
            keys = list(self._redis.scan_iter(match=self._subjects + "*", count=1000))
            for i in range(0, len(keys), _REPLAY_BATCH):
                pipe = self._redis.pipeline(transaction=False)
                for key in keys[i : i + _REPLAY_BATCH]:
                    self._keep(keys=[key], args=args, client=pipe)
                extended += sum(int(n) for n in pipe.execute())
            self._redis.hset(self._kept_key, mapping={kind: repr(h) for kind, h in longer.items()})
            return extended
        except self._errors as exc:
            raise SignalStoreError(f"redis: cannot extend the signals' expiries: {exc}") from exc

    def close(self) -> None:
        self._redis.close()
