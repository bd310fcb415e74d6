"""Errors of the policy service. Each names what is wrong and where (field, file and line, engine);
the decision path turns every one of them into a DENY with the message as its reason."""

from __future__ import annotations


class PolicyError(Exception):
    """Root of every policy-service error."""


class InvalidRequest(PolicyError):
    """A decision request or signal is malformed: the message starts with the field path."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class BundleError(PolicyError):
    """A policy bundle cannot be accepted (syntax error, failing test, wrong output shape...).

    `file` and `line` point at the culprit when known; the bundle that was serving keeps serving."""

    def __init__(self, problem: str, file: str = "", line: int = 0) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(f"{where}{problem}")


class ConfigError(PolicyError):
    """A trust-algorithm data file (weights, thresholds, threat lists) is malformed."""

    def __init__(self, file: str, problem: str, line: int = 0) -> None:
        self.file = file
        self.line = line
        super().__init__(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")


class EngineError(PolicyError):
    """The Rego engine failed to evaluate (runtime error, conflict...)."""


class EngineUnavailable(EngineError):
    """The Rego engine cannot be reached (OPA server down, timed out)."""


class StaleBundle(EngineError):
    """The bundle a caller evaluated against was replaced meanwhile; evaluate again with the new one."""


class MalformedDecision(PolicyError):
    """The policy answered something that is not a decision document."""


class SignalStoreError(PolicyError):
    """The signal store (Redis) failed."""
