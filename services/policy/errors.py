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


class SignalStoreFull(SignalStoreError):
    """The signal store has no room for another subject without forgetting signals that still count."""


class SignalStoreLost(SignalStoreError):
    """The signal store lost its memory (Redis restarted empty, failed over, flushed): its empty
    state is not a clean record, so decisions are DENY until the signals are restored."""


class SignalRefused(PolicyError):
    """A ReportSignal caller may not report (now)."""


class NotAReporter(SignalRefused):
    """The caller is not on the list of signal reporters (ZTMESH_SIGNAL_REPORTERS, operators)."""


class ReporterRateLimited(SignalRefused):
    """The reporter sent more signals than its rate allows (ZTMESH_SIGNAL_RATE, ZTMESH_SIGNAL_BURST)."""
