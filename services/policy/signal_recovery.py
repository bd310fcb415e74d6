"""Watching the signal store: a store that lost its memory is restored from the audit trail (every
accepted signal is audited as a `policy.signal` event) and from the policy spool's events audit has
not received yet, and a replica clock that drifts from the store's is reported. Until a restore
completes the store reads as an error, so decisions are DENY.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from ztmesh.audit.spoolfile import _scan  # the spool's frame format, read here without its writer
from ztmesh.policy.errors import PolicyError
from ztmesh.policy.signals import RecordedSignal, SignalStore, StoreStatus, replay_span

log = logging.getLogger("ztmesh.policy.signals")

CLOCK_SKEW = Gauge(
    "ztmesh_policy_signal_clock_skew_seconds", "this replica's clock minus the signal store's clock (Redis TIME)"
)
STORE_READY = Gauge("ztmesh_policy_signal_store_ready", "1 when the signal store holds every live signal, else 0")
RESTORED = Gauge("ztmesh_policy_signals_restored", "signals replayed from the audit trail by the last restore")

_ACCEPTED = ("policy", "policy.signal", "OK")  # service, action, outcome of an accepted signal's event
SignalSource = Callable[[float], Iterator[RecordedSignal]]  # signals audited since a time, oldest first


class AuditSignalSource:
    """Accepted signals read back from the audit trail (AuditService.Query, paged), and, with
    `spool_dir`, those whose record is still in a policy spool slot there (see unshipped_signals)."""

    def __init__(self, channel: Any, timeout_s: float = 30.0, spool_dir: Path | None = None) -> None:
        from ztmesh._proto.audit.v1 import audit_pb2_grpc

        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._timeout = timeout_s
        self._spool_dir = spool_dir

    def __call__(self, since: float) -> Iterator[RecordedSignal]:
        # The spool first, the trail second: a frame shipped (and its segment dropped) between the two
        # reads is then in the trail; one read from both is replayed once (by event id).
        unshipped = unshipped_signals(self._spool_dir, since) if self._spool_dir is not None else {}
        for event_id, signal in self._trail(since):
            unshipped.pop(event_id, None)
            yield signal
        if unshipped:
            log.warning("restore: %d signals from the policy spool, not in the audit trail yet", len(unshipped))
        yield from unshipped.values()

    def _trail(self, since: float) -> Iterator[tuple[str, RecordedSignal]]:
        from google.protobuf import timestamp_pb2

        from ztmesh._proto.audit.v1 import audit_pb2

        start = timestamp_pb2.Timestamp()
        start.FromNanoseconds(int(max(since, 0.0) * 1e9))
        token = ""
        while True:
            request = audit_pb2.QueryRequest(
                start_time=start, service="policy", action="policy.signal", outcome="OK",
                order=audit_pb2.ORDER_OLDEST_FIRST, page_size=1000, page_token=token,
            )  # fmt: skip
            token = ""
            for page in self._stub.Query(request, timeout=self._timeout):
                for record in page.records:
                    signal = _recorded(record.event.subject, record.event.details_json)
                    if signal is not None:
                        yield record.event.event_id.lower(), signal
                token = page.next_page_token or token
            if not token:
                return


def unshipped_signals(spool_dir: Path, since: float) -> dict[str, RecordedSignal]:
    """Accepted signals (by event id) in the policy spool slots under `spool_dir` (`<slot>/*.seg`)
    after each slot's cursor: durable, acknowledged to their reporter, not yet in the audit trail
    (audit was down, or they are being shipped). Read only, without the slots' locks: the live
    shippers keep going; a segment they drop meanwhile was shipped, so it is in the trail."""
    found: dict[str, RecordedSignal] = {}
    slots = sorted(p for p in spool_dir.iterdir() if p.name.isdigit()) if spool_dir.is_dir() else []
    for slot in slots:
        segments = sorted(int(p.stem) for p in slot.glob("*.seg") if p.stem.isdigit())
        try:
            seg, offset = (int(n) for n in (slot / "cursor").read_text().split())
        except (OSError, ValueError):  # no cursor yet (nothing shipped) or being replaced: from the start
            seg, offset = (segments[0] if segments else 0), 0
        for segment in (s for s in segments if s >= seg):
            try:
                data = (slot / f"{segment:012d}.seg").read_bytes()
            except FileNotFoundError:
                continue
            start = offset if segment == seg else 0
            for _start, _end, payload in _scan(data[start:]):
                if payload is None or b'"policy.signal"' not in payload:  # damaged, torn, or another event
                    continue
                try:
                    event = json.loads(payload)
                except ValueError:
                    continue
                if (event.get("service"), event.get("action"), event.get("outcome")) != _ACCEPTED:
                    continue
                signal = _recorded(str(event.get("subject", "")), str(event.get("details", "")))
                if signal is not None and signal.at >= since:
                    found[str(event.get("event_id", "")).lower()] = signal
    return found


def _recorded(subject: str, details_json: str) -> RecordedSignal | None:
    try:
        details = json.loads(details_json)
        return RecordedSignal(subject, str(details["kind"]), float(details["severity"]), float(details["at"]))
    except (ValueError, KeyError, TypeError):
        log.warning("policy.signal record of %r without kind/severity/at: not replayed", subject)
        return None


class SignalStoreMonitor:
    """Checks the store (readiness), restores it from `source` when it lost its memory, and reports
    clock skew beyond `max_skew_s`. `check_once` never raises."""

    def __init__(
        self,
        store: SignalStore,
        source: SignalSource | None,
        half_lives: Callable[[], Mapping[str, float]],
        max_skew_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.source = source
        self.half_lives = half_lives
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.status = StoreStatus(False, "not checked yet")
        self.skew_reported = False
        self.last_restore_s = 0.0  # how long the last restore took
        self._restore_problem = ""
        self._kept_for: dict[str, float] | None = None  # the half-lives the store's expiries were extended for

    @property
    def ready(self) -> bool:
        return self.status.ready

    def check_once(self) -> StoreStatus:
        status = self.store.status(self.clock())
        if status.lost and self.source is not None:
            status = self._restore()
        if status.ready:
            self._keep_signals()
        self._report(status)
        self.status = status
        return status

    def _restore(self) -> StoreStatus:
        assert self.source is not None
        started = time.monotonic()
        half_lives = self.half_lives()
        since = self.clock() - replay_span(half_lives)
        if not self.status.lost:
            log.error("signal store lost its memory: restoring signals audited since %.0f from the audit trail", since)
        try:
            count = self.store.restore(self.source(since), half_lives)
        except Exception as exc:  # the store, or the audit trail unreachable (grpc.RpcError): again in a second
            problem = f"{exc}" if isinstance(exc, PolicyError) else f"audit trail unavailable: {exc}"
            if problem != self._restore_problem:  # once per cause, not once a second per replica
                log.error("signal store restore failed (decisions stay DENY): %s", problem)
            self._restore_problem = problem
        else:
            self._restore_problem = ""
            self.last_restore_s = time.monotonic() - started
            RESTORED.set(count)
            log.warning("signal store restored: %d signals replayed in %.2f s", count, self.last_restore_s)
        return self.store.status(self.clock())

    def _keep_signals(self) -> None:
        """After a reload that made a half-life longer (and once at start: the config may have changed
        while no replica ran), subjects recorded with the shorter one must not expire while they count."""
        half_lives = dict(self.half_lives())
        if half_lives == self._kept_for:
            return
        try:
            extended = self.store.keep_for(half_lives)
        except PolicyError as exc:  # again at the next check
            log.error("signal expiries not extended to the current half-lives: %s", exc)
            return
        self._kept_for = half_lives
        if extended:
            log.warning("signal store: %d subjects kept longer for the current half-lives", extended)

    def _report(self, status: StoreStatus) -> None:
        STORE_READY.set(1 if status.ready else 0)
        if status.problem and status.problem != self.status.problem:
            log.error("signal store not ready (decisions are DENY): %s", status.problem)
        CLOCK_SKEW.set(status.clock_skew_s)
        skewed = abs(status.clock_skew_s) > self.max_skew_s
        if skewed and not self.skew_reported:
            log.error(
                "this replica's clock is %+.3f s from the signal store's (ZTMESH_SIGNAL_MAX_CLOCK_SKEW %.3g s): "
                "signal decay uses the store's clock; check NTP on this node",
                status.clock_skew_s,
                self.max_skew_s,
            )
        elif not skewed and self.skew_reported:
            log.warning("clock skew to the signal store back within bounds: %+.3f s", status.clock_skew_s)
        self.skew_reported = skewed

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.check_once()
            except Exception:  # a monitor that dies would leave readiness stale
                log.exception("signal store check failed")
                self.status = StoreStatus(False, "signal store check failed")
            stop.wait(interval_s)
