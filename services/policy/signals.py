"""Behaviour signals per subject (failed logins, anomalies, impossible travel...) with exponential
decay, behind one seam: in-process for a single replica, Redis for replicas that must agree.

Each (subject, kind) keeps a decayed running sum with the time it refers to: a new event at t adds
its severity to the sum decayed to t; a read decays the sum to now. So the state is O(kinds) per
subject whatever the number of events, and the answer does not depend on when it is read.
A per-subject version counts the signals, so a cached decision can be keyed on it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ztmesh.policy.errors import SignalStoreError

NEGLIGIBLE = 1e-4  # a decayed level below this no longer counts (nor is it kept)


@dataclass(frozen=True, slots=True)
class BehaviourState:
    """A subject's signal state at one instant: decayed severity sums per kind, and the version."""

    version: int
    levels: Mapping[str, float]


EMPTY = BehaviourState(0, {})


def decayed(value: float, since: float, now: float, half_life: float) -> float:
    if now <= since:
        return value
    return value * 2.0 ** (-(now - since) / half_life)


def add_event(value: float, ref: float, amount: float, at: float, half_life: float) -> tuple[float, float]:
    """Add `amount` happening at `at` to a sum `value` referring to time `ref`; return the new (sum, ref)."""
    if at >= ref:
        return decayed(value, ref, at, half_life) + amount, at
    return value + decayed(amount, at, ref, half_life), ref  # a late report of an older event


class SignalStore(Protocol):
    def record(self, subject_id: str, kind: str, amount: float, at: float, half_life: float) -> int:
        """Add an event (severity `amount` at time `at`, seconds since the epoch); return the new version."""
        ...

    def state(self, subject_id: str, now: float, half_lives: Mapping[str, float]) -> BehaviourState:
        """The subject's levels decayed to `now`; kinds missing from `half_lives` are ignored."""
        ...

    def close(self) -> None: ...


class MemorySignalStore:
    """Process-local signal state: the embedded default, for a single replica."""

    def __init__(self, max_subjects: int = 100_000) -> None:
        self._max = max_subjects
        # subject -> (version, {kind: (sum, ref_time)}); the tuple is replaced whole, so a reader
        # never sees a version that does not belong to its levels.
        self._subjects: dict[str, tuple[int, dict[str, tuple[float, float]]]] = {}
        self._lock = threading.Lock()

    def record(self, subject_id: str, kind: str, amount: float, at: float, half_life: float) -> int:
        with self._lock:
            version, kinds = self._subjects.get(subject_id, (0, {}))
            value, ref = kinds.get(kind, (0.0, at))
            kinds = {**kinds, kind: add_event(value, ref, amount, at, half_life)}
            if len(self._subjects) >= self._max and subject_id not in self._subjects:
                self._evict(at)
            self._subjects[subject_id] = (version + 1, kinds)
            return version + 1

    def _evict(self, now: float) -> None:
        # Drop subjects whose every level has decayed away (a day-long half-life bounds the guess);
        # if that frees nothing, drop the oldest half: losing decayed history only raises trust a little.
        quiet = [s for s, (_, kinds) in self._subjects.items() if all(
            decayed(v, ref, now, 86400.0) < NEGLIGIBLE for v, ref in kinds.values())]  # fmt: skip
        for subject in quiet or list(self._subjects)[: len(self._subjects) // 2]:
            del self._subjects[subject]

    def state(self, subject_id: str, now: float, half_lives: Mapping[str, float]) -> BehaviourState:
        entry = self._subjects.get(subject_id)
        if entry is None:
            return EMPTY
        version, kinds = entry
        levels = {}
        for kind, (value, ref) in kinds.items():
            half_life = half_lives.get(kind)
            if half_life is not None:
                level = decayed(value, ref, now, half_life)
                if level >= NEGLIGIBLE:
                    levels[kind] = level
        return BehaviourState(version, levels)

    def close(self) -> None:
        pass


# KEYS[1]: the subject's hash. ARGV: kind, amount, at, half_life, ttl_s. Returns the new version.
# Runs atomically in Redis, so concurrent reports from several replicas never lose an event.
_RECORD = """
local kind, amount, at, half_life = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local value = tonumber(redis.call('HGET', KEYS[1], 'v:' .. kind) or '0')
local ref = tonumber(redis.call('HGET', KEYS[1], 't:' .. kind) or ARGV[3])
if at >= ref then
  value = value * math.pow(2, -(at - ref) / half_life) + amount
  ref = at
else
  value = value + amount * math.pow(2, -(ref - at) / half_life)
end
redis.call('HSET', KEYS[1], 'v:' .. kind, string.format('%.17g', value), 't:' .. kind, string.format('%.17g', ref))
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return version
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSignalStore:
    """Signal state in Redis, shared by every policy replica: one hash per subject."""

    def __init__(self, url: str, prefix: str = "ztmesh:signals:", ttl_s: int = 30 * 86400, client: Any = None) -> None:
        import redis

        self._redis = client or redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = prefix
        self._ttl = ttl_s  # an idle subject's state expires: after weeks every level has decayed away
        self._record = self._redis.register_script(_RECORD)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def record(self, subject_id: str, kind: str, amount: float, at: float, half_life: float) -> int:
        try:
            args: list[str | int] = [kind, repr(amount), repr(at), repr(half_life), self._ttl]
            return int(self._record(keys=[self._prefix + subject_id], args=args))
        except self._errors as exc:
            raise SignalStoreError(f"redis: cannot record signal for {subject_id!r}: {exc}") from exc

    def state(self, subject_id: str, now: float, half_lives: Mapping[str, float]) -> BehaviourState:
        try:
            raw = self._redis.hgetall(self._prefix + subject_id)
        except self._errors as exc:
            raise SignalStoreError(f"redis: cannot read signals of {subject_id!r}: {exc}") from exc
        if not raw:
            return EMPTY
        fields = {_text(k): _text(v) for k, v in raw.items()}
        levels = {}
        for name, value in fields.items():
            if not name.startswith("v:"):
                continue
            kind = name[2:]
            half_life = half_lives.get(kind)
            if half_life is None:
                continue
            level = decayed(float(value), float(fields.get("t:" + kind, now)), now, half_life)
            if level >= NEGLIGIBLE:
                levels[kind] = level
        return BehaviourState(int(fields.get("version", "0")), levels)

    def close(self) -> None:
        self._redis.close()
