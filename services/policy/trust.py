"""The trust algorithm: NIST SP 800-207 §3.3.1 score-based and contextual. Five factors, each 0-1 —
identity assurance, device posture, network/threat intelligence, behaviour history (decayed
signals) and request context — weighted into a 0-100 score whose every contribution is returned.

Weights and thresholds are data (policies/trust/weights.json, read by trust_config.py); this module
only computes, and keeps per-decision work to dictionary lookups and a few multiplications.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ztmesh.policy.model import DecisionRequest, Device, Factor
from ztmesh.policy.signals import BehaviourState
from ztmesh.policy.trust_config import TrustModel

FACTORS = ("identity", "device", "network", "behaviour", "context")
_MEMO_SIZE = 16384
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True, slots=True)
class TrustResult:
    score: float  # 0-100, the sum of the factors' contributions
    factors: tuple[Factor, ...]
    flags: tuple[str, ...]  # hard signals for the policy, e.g. network_blocklisted
    local_hour: int  # the clock the context factor used, for the policy too
    weekday: int  # 0 = Monday

    def factor_scores(self) -> dict[str, float]:
        return {f.name: f.score for f in self.factors}


class TrustScorer:
    """Scores requests with the current TrustModel; `model` is swapped whole on reload.

    A factor depends on a few request fields only (the device, the source address...), which
    repeat from one request to the next; each computed Factor is remembered per model and inputs,
    so a typical decision computes little more than the behaviour factor and a sum."""

    def __init__(self, model: TrustModel) -> None:
        self.model = model
        self._memo_model: TrustModel | None = None
        self._memo: dict[tuple[Any, ...], tuple[Factor, str]] = {}
        self._clock: dict[int, tuple[int, int]] = {}

    def _remember(
        self, model: TrustModel, key: tuple[Any, ...], compute: Callable[[], tuple[float, str, str]]
    ) -> tuple[Factor, str]:
        if self._memo_model is not model:  # a reload: nothing computed under the old model is valid
            self._memo, self._clock, self._memo_model = {}, {}, model
        hit = self._memo.get(key)
        if hit is None:
            value, why, flag = compute()
            hit = (self._factor(model, key[0], value, why), flag)
            if len(self._memo) > _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    @staticmethod
    def _factor(model: TrustModel, name: str, value: float, why: str) -> Factor:
        weight = model.config.weights[name]
        return Factor(name, round(value, 4), weight, round(100.0 * weight * value / model.config.total_weight, 2), why)

    # --- factors -------------------------------------------------------------------------------

    @staticmethod
    def _identity(model: TrustModel, request: DecisionRequest) -> tuple[float, str, str]:
        cfg = model.config.identity
        subject = request.subject
        assurance = cfg.assurance[subject.assurance.value]
        methods = [m.strip().lower() for m in subject.auth_method.split(",") if m.strip()]
        # Several methods (amr "pwd,otp") are as strong as the strongest of them.
        strength = max((cfg.methods.get(m, cfg.unknown_method) for m in methods), default=cfg.no_method)
        method = subject.auth_method or "no method"
        return (
            assurance * strength,
            f"assurance {subject.assurance.value} ({assurance:g}) via {method} ({strength:g})",
            "",
        )

    @staticmethod
    def _device(model: TrustModel, device: Device | None) -> tuple[float, str, str]:
        cfg = model.config.device
        if device is None:
            return cfg.missing, "no device posture reported", ""
        checks = cfg.checks
        score = 0.0
        failed = []
        for name, passed in (
            ("managed", device.managed),
            ("compliant", device.compliant),
            ("disk_encrypted", device.disk_encrypted),
            ("endpoint_protection", device.endpoint_protection),
        ):
            if passed:
                score += checks[name]
            else:
                failed.append(f"not {name}")
        age = device.patch_age_days
        if age is None:
            failed.append("patch age unknown")
        else:
            if age <= cfg.patch_fresh_days:
                freshness = 1.0
            elif age >= cfg.patch_stale_days:
                freshness = 0.0
            else:  # linear between fresh and stale
                freshness = (cfg.patch_stale_days - age) / (cfg.patch_stale_days - cfg.patch_fresh_days)
            score += checks["patched"] * freshness
            if freshness < 1.0:
                failed.append(f"patches {age} d old")
        why = ("posture: " + ", ".join(failed)) if failed else "managed, compliant, encrypted, protected, patched"
        return score / cfg.total, why, ""

    @staticmethod
    def _network(model: TrustModel, source_ip: str) -> tuple[float, str, str]:
        cfg = model.config.network
        if not source_ip:
            return cfg.missing, "no source address", ""
        index = model.intel.classify(source_ip)
        if index < 0:
            return cfg.default, f"{source_ip} on no list", ""
        rule = cfg.lists[index]
        return rule.score, f"{source_ip} on {rule.label}", rule.flag

    @staticmethod
    def _behaviour(model: TrustModel, state: BehaviourState) -> tuple[float, str]:
        if not state.levels:
            return 1.0, "no recent signals"
        kinds = model.config.behaviour.kinds
        risk = 0.0
        parts = []
        for kind, level in sorted(state.levels.items()):
            risk += kinds[kind].weight * level
            parts.append(f"{kind} {level:.2f}")
        return max(0.0, 1.0 - risk), f"risk {risk:.2f} from " + ", ".join(parts)

    def _local_clock(self, model: TrustModel, now: float) -> tuple[int, int]:
        # Time zones move in whole quarter hours, so the local hour is constant within one.
        quarter = int(now // 900)
        hit = self._clock.get(quarter)
        if hit is None:
            local = datetime.fromtimestamp(quarter * 900, model.config.context.zone)
            hit = (local.hour, local.weekday())
            if len(self._clock) > 1024:
                self._clock.clear()
            self._clock[quarter] = hit
        return hit

    @staticmethod
    def _context(
        model: TrustModel, hour: int, weekday: int, on_duty: bool, purpose: str, agent: bool
    ) -> tuple[float, str, str]:
        cfg = model.config.context
        score = 1.0
        when = f"{_WEEKDAYS[weekday]} {hour:02d}h"
        if weekday in cfg.business_days and cfg.business_start <= hour < cfg.business_end:
            notes = [f"business hours ({when})"]
        elif on_duty:
            notes = [f"off hours ({when}), on-duty role"]
        else:
            score *= cfg.off_hours
            notes = [f"off hours ({when})"]
        if purpose:
            notes.append(f"purpose {purpose}")
        else:
            score *= cfg.purpose_missing
            notes.append("no purpose declared")
        if not agent:
            score *= cfg.user_agent_missing
            notes.append("no user agent")
        return score, ", ".join(notes), ""

    # --- the score -----------------------------------------------------------------------------

    def score(self, request: DecisionRequest, behaviour: BehaviourState, now: float) -> TrustResult:
        model = self.model  # one snapshot for the whole computation, even across a reload
        remember = self._remember
        subject = request.subject
        ctx = request.context
        identity, _ = remember(
            model, ("identity", subject.assurance, subject.auth_method), lambda: self._identity(model, request)
        )
        device, _ = remember(model, ("device", request.device), lambda: self._device(model, request.device))
        network, flag = remember(model, ("network", ctx.source_ip), lambda: self._network(model, ctx.source_ip))
        if behaviour.levels:
            conduct = self._factor(model, "behaviour", *self._behaviour(model, behaviour))
        else:
            conduct, _ = remember(model, ("behaviour",), lambda: (*self._behaviour(model, behaviour), ""))
        hour, weekday = self._local_clock(model, now)
        on_duty = bool(subject.roles) and not model.config.context.always_on_roles.isdisjoint(subject.roles)
        key = ("context", hour, weekday, on_duty, ctx.purpose, bool(ctx.user_agent))
        context, _ = remember(model, key, lambda: self._context(model, *key[1:]))
        factors = (identity, device, network, conduct, context)
        # The score is the sum of the shown contributions, so the breakdown always adds up.
        score = round(
            identity.contribution
            + device.contribution
            + network.contribution
            + conduct.contribution
            + context.contribution,
            2,
        )
        return TrustResult(min(100.0, max(0.0, score)), factors, (flag,) if flag else (), hour, weekday)

    def behaviour_score(self, state: BehaviourState) -> float:
        return round(self._behaviour(self.model, state)[0], 4)
