"""Prometheus metrics of an emitter's audit spool: the backlog, shipping progress and trouble (a stalled
shipper, damaged frames, refusals), one label value per spool folder."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

_LABELS = ["spool"]
_PENDING = Gauge("ztmesh_audit_spool_pending_bytes", "Spooled audit events not yet acknowledged by audit, in bytes",
                 _LABELS, multiprocess_mode="livesum")  # fmt: skip
_STALLED = Gauge("ztmesh_audit_spool_stalled", "1 while events wait and nothing shipped for the stall period",
                 _LABELS, multiprocess_mode="livemax")  # fmt: skip
_BATCH = Gauge("ztmesh_audit_spool_batch_max", "Events per Append the shipper sends (the receiver's limit once known)",
               _LABELS, multiprocess_mode="livemin")  # fmt: skip
_SPOOLED = Counter("ztmesh_audit_spool_spooled", "Audit events written to the spool", _LABELS)
_SHIPPED = Counter("ztmesh_audit_spool_shipped", "Spooled audit events acknowledged by audit", _LABELS)
_FAILURES = Counter("ztmesh_audit_spool_ship_failures", "Shipping attempts that failed (retried)", _LABELS)
_REJECTED = Counter("ztmesh_audit_spool_rejected", "Spooled events audit refused for good (rejected.jsonl)", _LABELS)
_DAMAGED = Counter("ztmesh_audit_spool_damaged_frames",
                   "Damaged spool stretches set aside in corrupt/ (torn tails included)", _LABELS)  # fmt: skip
_FULL = Counter("ztmesh_audit_spool_refused_full", "Events refused because the spool was full", _LABELS)
_ADOPTED = Counter("ztmesh_audit_spool_adopted_slots", "Unclaimed sibling slots this process drained", _LABELS)


class SpoolMetrics:
    """The metrics of one spool folder."""

    def __init__(self, spool: str) -> None:
        self.pending_bytes = _PENDING.labels(spool)
        self.stalled = _STALLED.labels(spool)
        self.batch_max = _BATCH.labels(spool)
        self.spooled = _SPOOLED.labels(spool)
        self.shipped = _SHIPPED.labels(spool)
        self.ship_failures = _FAILURES.labels(spool)
        self.rejected = _REJECTED.labels(spool)
        self.damaged = _DAMAGED.labels(spool)
        self.refused_full = _FULL.labels(spool)
        self.adopted = _ADOPTED.labels(spool)
