"""The Policy Engine (NIST SP 800-207): validate the request, score trust, evaluate the Rego bundle,
record the decision to audit, answer. It fails closed: whatever goes wrong — a malformed request,
an engine error or timeout, an unreachable OPA or Redis, a malformed answer, an audit trail that
cannot take the record — the answer is DENY with the reason, and no exception escapes `decide`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from ztmesh.audit.sanitize import mask_ips
from ztmesh.mesh.auditing import AuditEmitter, AuditEvent, emit_on_loop, uuid7
from ztmesh.policy.answer import Answer, parse_answer
from ztmesh.policy.bundle import Bundle, BundleManager, ReloadResult
from ztmesh.policy.cache import DecisionCache, cache_key
from ztmesh.policy.errors import (
    BundleError,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    MalformedDecision,
    SignalRefused,
    SignalStoreError,
    StaleBundle,
)
from ztmesh.policy.inputs import rego_input
from ztmesh.policy.model import Decision, DecisionRequest, Fault, Outcome, Signal
from ztmesh.policy.reporters import ReporterGate
from ztmesh.policy.signals import SignalStore
from ztmesh.policy.trust import TrustScorer
from ztmesh.policy.validation import RequestValidator

log = logging.getLogger("ztmesh.policy.decider")

DEFAULT_CLASSIFICATIONS_PATH = ("ztmesh_pack", "minimum_trust")


class PluginClient(Protocol):
    """An extra data source for the Rego input (e.g. the lgpd-analyzer plugin's risk), under
    input.plugins.<name>. An error fails the decision closed."""

    name: str

    def enrich(self, request: DecisionRequest) -> Mapping[str, Any]: ...


class PluginFailure(Exception):
    pass


@dataclass(frozen=True)
class PolicyInfo:
    engine: str
    revision: str
    packages: tuple[str, ...]
    loaded_at: float
    trust_revision: str
    last_error: str


class PolicyEngine:
    """The decision point. Thread-safe: each call works on snapshots of the bundle and trust model."""

    def __init__(
        self,
        bundles: BundleManager,
        scorer: TrustScorer,
        signals: SignalStore,
        *,
        cache: DecisionCache | None = None,
        audit: AuditEmitter | None = None,
        plugins: Sequence[PluginClient] = (),
        validator: RequestValidator | None = None,
        clock: Callable[[], float] = time.time,
        classifications_path: Sequence[str] | None = DEFAULT_CLASSIFICATIONS_PATH,
        max_batch: int = 100,
        reporters: ReporterGate | None = None,
    ) -> None:
        self.bundles = bundles
        self.engine = bundles.engine
        self.scorer = scorer
        self.signals = signals
        self.cache = cache
        self.audit = audit
        self.plugins = tuple(plugins)
        self.validator = validator or RequestValidator()
        self.clock = clock
        self.max_batch = max_batch
        self.reporters = reporters  # None: every caller may report (in-process use, `decide --local`)
        self._classifications_path = tuple(classifications_path) if classifications_path else None
        self._classifications: tuple[str, frozenset[str] | None] = ("", None)
        if cache is not None:
            bundles.on_swap(lambda _bundle: cache.clear())

    # --- decisions -----------------------------------------------------------------------------

    def _known_classifications(self, bundle: Bundle) -> frozenset[str] | None:
        revision, known = self._classifications
        if revision != bundle.revision:
            table = bundle.data_at(self._classifications_path) if self._classifications_path else None
            known = frozenset(table) if isinstance(table, Mapping) else None
            self._classifications = (bundle.revision, known)
        return known

    def _plugin_data(self, request: DecisionRequest) -> dict[str, Any] | None:
        if not self.plugins:
            return None
        data = {}
        for plugin in self.plugins:
            try:
                data[plugin.name] = dict(plugin.enrich(request))
            except Exception as exc:  # a data source that fails must not turn into a permission
                raise PluginFailure(f"plugin {plugin.name} failed: {exc}") from exc
        return data

    def _answer(self, bundle: Bundle, document: dict[str, Any], version: int) -> tuple[Bundle, Answer, bool]:
        for _attempt in range(3):
            pruned = bundle.prune(document)
            key = cache_key(bundle.revision, version, pruned) if self.cache is not None else ""
            if self.cache is not None:
                hit = self.cache.get(key)
                if hit is not None:
                    return bundle, hit, True
            try:
                raw = self.engine.evaluate(bundle, document, pruned)
            except StaleBundle:
                bundle = self.bundles.current  # swapped meanwhile: evaluate on the new one
                continue
            answer = parse_answer(raw)
            if self.cache is not None:
                self.cache.put(key, answer)
            return bundle, answer, False
        raise EngineError("the policy bundle kept changing during evaluation")

    def _decide(self, request: DecisionRequest, now: float, decision_id: str) -> Decision:
        bundle = self.bundles.current
        self.validator.validate(request, self._known_classifications(bundle), now)
        model = self.scorer.model
        state = self.signals.state(request.subject.id, now, model.config.behaviour.half_lives)
        trust = self.scorer.score(request, state, now)
        document = rego_input(request, trust, self._plugin_data(request))
        bundle, answer, cached = self._answer(bundle, document, state.version)
        return Decision(
            outcome=answer.outcome,
            trust_score=trust.score,
            factors=trust.factors,
            reasons=answer.reasons,
            obligations=answer.obligations,
            step_up=answer.step_up,
            policy_revision=bundle.revision,
            decision_id=decision_id,
            request_id=request.context.request_id,
            cached=cached,
        )

    def _denied(self, request: DecisionRequest, decision_id: str, fault: Fault, reason: str) -> Decision:
        revision = self.bundles.current.revision if self.bundles.loaded else ""
        return Decision(
            Outcome.DENY, 0.0, (), (reason,), policy_revision=revision, decision_id=decision_id,
            request_id=request.context.request_id, fault=fault,
        )  # fmt: skip

    @property
    def decides_on_loop(self) -> bool:
        """Whether a decision is pure computation in this process (the embedded engine, in-process
        signals and cache, no plugins), so that a handler on the serving loop may make it there; one
        that asks Redis, an OPA server or a plugin over the network is made in a thread."""
        parts = (self.engine, self.signals, *([self.cache] if self.cache is not None else []))
        return not self.plugins and all(getattr(part, "in_process", False) for part in parts)

    def decide(self, request: DecisionRequest, caller: str = "") -> Decision:
        """The decision for one request, recorded to audit before it is returned. Never raises."""
        return self._record(request, self._decision(request), caller)

    async def decide_async(self, request: DecisionRequest, caller: str = "") -> Decision:
        """`decide` for a handler on the serving loop: the audit record is awaited, never a thread's wait."""
        if self.decides_on_loop:
            decision = self._decision(request)
        else:
            decision = await asyncio.to_thread(self._decision, request)
        return await self._record_async(request, decision, caller)

    def _decision(self, request: DecisionRequest) -> Decision:
        """The decision for one request, not yet recorded. Never raises."""
        decision_id = uuid7()
        try:
            decision = self._decide(request, self.clock(), decision_id)
        except InvalidRequest as exc:
            decision = self._denied(request, decision_id, Fault.INVALID_REQUEST, f"invalid request: {exc}")
        except EngineUnavailable as exc:
            decision = self._denied(request, decision_id, Fault.ENGINE_UNAVAILABLE, f"policy engine unavailable: {exc}")
        except EngineError as exc:
            decision = self._denied(request, decision_id, Fault.ENGINE_ERROR, f"policy engine error: {exc}")
        except MalformedDecision as exc:
            decision = self._denied(request, decision_id, Fault.MALFORMED_DECISION, f"malformed policy decision: {exc}")
        except SignalStoreError as exc:
            decision = self._denied(request, decision_id, Fault.SIGNAL_STORE_ERROR, f"signal store unavailable: {exc}")
        except PluginFailure as exc:
            decision = self._denied(request, decision_id, Fault.PLUGIN_ERROR, str(exc))
        except BaseException as exc:  # a bug (or a native panic) must still answer DENY
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            log.exception("internal error while deciding %s", decision_id)
            decision = self._denied(request, decision_id, Fault.INTERNAL, f"internal error: {type(exc).__name__}")
        return decision

    def refuse(self, request: DecisionRequest, reason: str, caller: str = "") -> Decision:
        """An audited DENY for a request that could not even be read (e.g. an unknown enum value)."""
        return self._record(request, self._denied(request, uuid7(), Fault.INVALID_REQUEST, reason), caller)

    async def refuse_async(self, request: DecisionRequest, reason: str, caller: str = "") -> Decision:
        """`refuse` for a handler on the serving loop."""
        denied = self._denied(request, uuid7(), Fault.INVALID_REQUEST, reason)
        return await self._record_async(request, denied, caller)

    def decide_batch(self, requests: Sequence[DecisionRequest], caller: str = "") -> list[Decision]:
        if len(requests) > self.max_batch:
            raise InvalidRequest("requests", f"{len(requests)} requests; the maximum per batch is {self.max_batch}")
        return [self.decide(request, caller) for request in requests]

    def _record(self, request: DecisionRequest, decision: Decision, caller: str) -> Decision:
        if self.audit is None:
            return decision
        try:
            self.audit.emit(self._event(request, decision, caller))
        except Exception as exc:  # no durable record, no permission
            return self._unrecorded(request, decision, exc)
        return decision

    async def _record_async(self, request: DecisionRequest, decision: Decision, caller: str) -> Decision:
        if self.audit is None:
            return decision
        try:
            await emit_on_loop(self.audit, self._event(request, decision, caller))
        except Exception as exc:  # no durable record, no permission
            return self._unrecorded(request, decision, exc)
        return decision

    def _unrecorded(self, request: DecisionRequest, decision: Decision, exc: Exception) -> Decision:
        log.error("audit record of decision %s failed: %s", decision.decision_id, exc)
        reason = f"audit trail unavailable, decision not recorded: {exc}"
        return self._denied(request, decision.decision_id, Fault.AUDIT_ERROR, reason)

    def _event(self, request: DecisionRequest, decision: Decision, caller: str) -> AuditEvent:
        resource = request.resource
        # The client's address cut to its network here, as sanitizing would, and said so (masked): the
        # rest of the details then need no walk of their own on the emitter's path (record.make_event).
        source_ip = mask_ips(request.context.source_ip)
        return AuditEvent(
            service="policy",
            action="decide",
            outcome=decision.outcome.name,
            caller_spiffe_id=caller,
            subject=request.subject.id,
            resource=f"{resource.type}/{resource.id}" if resource.id else resource.type,
            decision_id=decision.decision_id,
            trace_id=decision.request_id,
            details={
                "action": request.action,
                "classification": resource.classification,
                "purpose": request.context.purpose,
                "source_ip": source_ip,
                "device_id": request.device.id if request.device else "",
                "trust_score": decision.trust_score,
                "factors": {f.name: f.score for f in decision.factors},
                "reasons": list(decision.reasons),
                "obligations": list(decision.obligations),
                "step_up": list(decision.step_up),
                "policy_revision": decision.policy_revision,
                "engine": self.engine.name,
                "fault": decision.fault.value,
                "cached": decision.cached,
            },
            masked=("/source_ip",) if source_ip != request.context.source_ip else (),
        )

    # --- signals, info, reload -----------------------------------------------------------------

    def report_signal(self, signal: Signal, caller: str = "") -> float:
        """Record a behaviour signal from `caller` (its SPIFFE ID, the recorded source; the signal's own
        `source` is only an annotation); return the subject's behaviour factor (0-1) after it.
        Raises SignalRefused (NotAReporter, ReporterRateLimited) for a caller that may not report, and
        InvalidRequest for a bad signal, both audited; SignalStoreError (SignalStoreFull...) when the store fails."""
        if self.reporters is not None:
            try:
                self.reporters.admit(caller)
            except SignalRefused as exc:
                refused = {"kind": signal.kind, "annotation": signal.source, "error": str(exc)}
                self._record_admin("policy.signal", "REFUSED", caller, refused, subject=signal.subject_id)
                raise
        now = self.clock()
        kinds = self.scorer.model.config.behaviour.kinds
        try:
            self.validator.validate_signal(signal, kinds.keys(), now)
        except InvalidRequest as exc:
            self.refuse_signal(signal, exc, caller)
        at = signal.time.timestamp() if signal.time is not None else None
        kind = kinds[signal.kind]
        self.signals.record(signal.subject_id, signal.kind, signal.severity, kind.half_life_s, now, at)
        half_lives = self.scorer.model.config.behaviour.half_lives
        state = self.signals.state(signal.subject_id, now, half_lives)
        score = self.scorer.behaviour_score(state)
        # `at` is what a restore from the audit trail replays: the event's time, or the store's now.
        details = {"kind": signal.kind, "severity": signal.severity, "source": caller, "annotation": signal.source,
                   "at": at if at is not None else state.as_of, "behaviour_score": score}  # fmt: skip
        self._record_admin("policy.signal", "OK", caller, details, subject=signal.subject_id)
        return score

    def refuse_signal(self, signal: Signal, problem: Exception, caller: str = "") -> NoReturn:
        """Audit a signal refused as malformed (also one whose fields could not even be read, such as a
        time no clock can hold: `signal` then carries what could be), then raise `problem`."""
        details = {"kind": signal.kind, "annotation": signal.source, "error": str(problem)}
        self._record_admin("policy.signal", "REFUSED", caller, details, subject=signal.subject_id)
        raise problem

    def info(self) -> PolicyInfo:
        bundle = self.bundles.current if self.bundles.loaded else None
        return PolicyInfo(
            engine=self.engine.name,
            revision=bundle.revision if bundle else "",
            packages=bundle.packages if bundle else (),
            loaded_at=bundle.loaded_at if bundle else 0.0,
            trust_revision=self.scorer.model.revision,
            last_error=self.bundles.last_error or self.bundles.engine_problem(),
        )

    def reload(self, caller: str = "") -> ReloadResult:
        """Load the bundle folder again (BundleError if it is refused; the old bundle keeps serving).
        A swap and a refusal are both audited; an engine that is not up yet is not an event."""
        try:
            result = self.bundles.reload()
        except BundleError as exc:
            self._record_admin("policy.bundle.load", "REFUSED", caller, {"error": str(exc)})
            raise
        if result.changed:
            details = {"revision": result.revision, "previous": result.previous, "engine": self.engine.name}
            self._record_admin("policy.bundle.load", "OK", caller, details)
        return result

    def _record_admin(self, action: str, outcome: str, caller: str, details: dict[str, Any], subject: str = "") -> None:
        """Audit a change to what decisions depend on. Best effort: the change has happened (a signal
        only lowers trust, a swapped bundle serves), so a failed record is logged, not undone."""
        if self.audit is None:
            return
        event = AuditEvent(service="policy", action=action, outcome=outcome, caller_spiffe_id=caller,
                           subject=subject, details=details)  # fmt: skip
        try:
            self.audit.emit(event)
        except Exception as exc:
            log.error("audit record of %s failed: %s", action, exc)
