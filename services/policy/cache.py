"""Decision cache: the policy's answer keyed on everything that can change it.

The key is the bundle revision, the subject's signal version and a hash of the exact Rego input the
policies can read (which holds the trust score and factors). The answer is a pure function of
those, so an entry can never be stale: a reload changes the revision, a signal changes the version
and the score. Old entries are unreachable and age out (the in-process cache is also cleared on
reload). A cache failure is a miss, never an error: the cache only saves work.
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


class RedisDecisionCache:
    """A cache shared by the replicas in Redis, entries expiring after `ttl_s`."""

    def __init__(self, url: str, prefix: str = "ztmesh:decision:", ttl_s: int = 300, client: Any = None) -> None:
        import redis

        self._redis = client or redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._prefix = prefix
        self._ttl = ttl_s
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def get(self, key: str) -> Answer | None:
        try:
            raw = self._redis.get(self._prefix + key)
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
            self._redis.set(self._prefix + key, json.dumps(doc, separators=(",", ":")), ex=self._ttl)
        except self._errors as exc:
            log.warning("decision cache unavailable (not stored): %s", exc)

    def clear(self) -> None:
        # Entries of the old revision are unreachable by key and expire on their own; nothing to do
        # that would not also hit other replicas still on the old revision mid-rollout.
        pass

    def close(self) -> None:
        self._redis.close()
