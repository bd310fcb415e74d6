"""Decision cache: the policy's answer keyed on everything that can change it.

The key is the bundle revision, the subject's signal version and a hash of the exact Rego input the
policies can read (which holds the trust score and factors). The answer is a pure function of
those, so an entry can never be stale: a reload changes the revision, a signal changes the version
and the score. The revision is the one the engine confirmed serving, and an answer is stored only
under the revision that produced it (decider.py, opa_server.py). On every swap the cache is
cleared as well: the in-process one empties, the Redis one moves to a new generation (a counter in
Redis read in the same script as each entry), so no replica can hit an entry written before any
replica's last swap. A cache failure is a miss, never an error: the cache only saves work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from ztmesh.policy.answer import Answer
from ztmesh.policy.model import Outcome

log = logging.getLogger("ztmesh.policy.cache")


def cache_key(revision: str, signal_version: int, pruned: Mapping[str, Any]) -> str:
    body = json.dumps(pruned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
    return f"{revision}:{signal_version}:{digest}"


class DecisionCache(Protocol):
    def get(self, key: str) -> Answer | None: ...

    def put(self, key: str, answer: Answer) -> None: ...

    def clear(self) -> None:
        """Drop every entry (after a reload: they can no longer be hit, so free the memory)."""
        ...


class MemoryDecisionCache:
    """A bounded in-process cache; when full, the oldest half is dropped (cheaper than per-hit LRU)."""

    in_process = True  # no I/O: a decision on the serving loop may use it there (PolicyEngine.decides_on_loop)

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._entries: dict[str, Answer] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Answer | None:
        answer = self._entries.get(key)
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    def put(self, key: str, answer: Answer) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                for old in list(self._entries)[: self._max // 2]:
                    del self._entries[old]
            self._entries[key] = answer

    def clear(self) -> None:
        with self._lock:
            self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)


# The generation and the entry in one round trip and one atomic step: an entry is always read
# (and written) under the generation current at that instant.
_GET = """local g = redis.call('GET', KEYS[1]) or '0'
return redis.call('GET', ARGV[1] .. g .. ':' .. ARGV[2])"""
_PUT = """local g = redis.call('GET', KEYS[1]) or '0'
return redis.call('SET', ARGV[1] .. g .. ':' .. ARGV[2], ARGV[3], 'EX', ARGV[4])"""


class RedisDecisionCache:
    """A cache shared by the replicas in Redis, entries expiring after `ttl_s`, keyed under the
    current generation (`<prefix>generation`), which `clear()` moves on."""

    def __init__(self, url: str, prefix: str = "ztmesh:decision:", ttl_s: int = 300, client: Any = None) -> None:
        import redis

        self._redis = client or redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._prefix = prefix
        self._generation = prefix + "generation"
        self._ttl = ttl_s
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._get = self._redis.register_script(_GET)
        self._put = self._redis.register_script(_PUT)

    def get(self, key: str) -> Answer | None:
        try:
            raw = self._get(keys=[self._generation], args=[self._prefix, key])
        except self._errors as exc:
            log.warning("decision cache unavailable (miss): %s", exc)
            return None
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return Answer(Outcome(doc["o"]), tuple(doc["r"]), tuple(doc["ob"]), tuple(doc["s"]))
        except (ValueError, KeyError, TypeError):
            return None  # written by another version: recompute

    def put(self, key: str, answer: Answer) -> None:
        doc = {"o": answer.outcome.value, "r": answer.reasons, "ob": answer.obligations, "s": answer.step_up}
        try:
            self._put(
                keys=[self._generation], args=[self._prefix, key, json.dumps(doc, separators=(",", ":")), self._ttl]
            )
        except self._errors as exc:
            log.warning("decision cache unavailable (not stored): %s", exc)

    def clear(self) -> None:
        """A new generation: every entry written so far, by any replica, is unreachable (and
        expires). Replicas still on the old revision mid-rollout only lose their hits."""
        try:
            self._redis.incr(self._generation)
        except self._errors as exc:
            # Entries stay keyed on their revision, so none answers for another bundle; only the
            # belt of a new generation is missing.
            log.warning("decision cache generation not moved on: %s", exc)

    def close(self) -> None:
        self._redis.close()
