"""The policy's answer: the document the Rego entrypoint must produce, and its strict check.

    {"outcome": "allow"|"deny"|"challenge", "reasons": [str], "obligations": [str], "step_up": [str]}

A deny names at least one reason, a challenge at least one step-up, and only an allow carries
obligations. Anything else is malformed: at load time the bundle is refused, at decision time the
answer is DENY (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ztmesh.policy.errors import MalformedDecision
from ztmesh.policy.model import Outcome
from ztmesh.policy.rego import UNDEFINED

MAX_ITEMS = 64
MAX_TEXT = 1024
_OUTCOMES = {o.value: o for o in Outcome}


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    reasons: tuple[str, ...]
    obligations: tuple[str, ...]
    step_up: tuple[str, ...]


def _strings(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    if key not in doc:
        raise MalformedDecision(f"{key!r} is missing")
    value = doc[key]
    if not isinstance(value, list):
        raise MalformedDecision(f"{key!r} must be a list of strings, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise MalformedDecision(f"{key!r} has {len(value)} items; the maximum is {MAX_ITEMS}")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_TEXT:
            raise MalformedDecision(f"{key!r} must hold non-empty strings up to {MAX_TEXT} characters, got {item!r}")
    return tuple(value)


def _kind(value: Any) -> str:
    """The Rego (JSON) name of a value's type, as a policy author wrote it."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}.get(
        type(value), type(value).__name__
    )


def parse_answer(raw: Any) -> Answer:
    if raw is UNDEFINED:
        raise MalformedDecision("the decision is undefined for this input")
    if not isinstance(raw, dict):
        raise MalformedDecision(f"the decision must be an object, got {_kind(raw)}")
    outcome = _OUTCOMES.get(raw.get("outcome"))  # type: ignore[arg-type]
    if outcome is None:
        raise MalformedDecision(f"'outcome' must be one of allow, deny, challenge; got {raw.get('outcome')!r}")
    answer = Answer(outcome, _strings(raw, "reasons"), _strings(raw, "obligations"), _strings(raw, "step_up"))
    if outcome is Outcome.DENY and not answer.reasons:
        raise MalformedDecision("a deny must give at least one reason")
    if outcome is Outcome.CHALLENGE and not answer.step_up:
        raise MalformedDecision("a challenge must name at least one step-up")
    if outcome is not Outcome.CHALLENGE and answer.step_up:
        raise MalformedDecision(f"only a challenge names step-ups, not {outcome.value}")
    if outcome is not Outcome.ALLOW and answer.obligations:
        raise MalformedDecision(f"only an allow carries obligations, not {outcome.value}")
    return answer
