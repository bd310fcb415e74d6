"""Who may report behaviour signals, and how fast: a list of reporter SPIFFE IDs (operators, the
SIEM/IdP/EDR workloads) and a token bucket per reporter. The buckets live in this process: with N
policy replicas behind a balancer a reporter gets up to N times the rate in total.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from ztmesh.policy.errors import NotAReporter, ReporterRateLimited


class ReporterGate:
    """Admits a signal from `caller` (its SPIFFE ID) or raises NotAReporter / ReporterRateLimited."""

    def __init__(
        self,
        reporters: Iterable[str],
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reporters = frozenset(reporters)
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # reporter -> (tokens, at); only listed ones
        self._lock = threading.Lock()

    def admit(self, caller: str) -> None:
        if caller not in self.reporters:
            who = caller or "a caller without a SPIFFE ID"
            raise NotAReporter(f"{who} is not a signal reporter (ZTMESH_SIGNAL_REPORTERS, ZTMESH_OPERATORS)")
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(caller, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                raise ReporterRateLimited(
                    f"{caller} sent more than {self._burst:g} signals at once or {self._rate:g} per second "
                    "(ZTMESH_SIGNAL_BURST, ZTMESH_SIGNAL_RATE); retry later"
                )
            self._buckets[caller] = (tokens - 1.0, now)
