"""Errors raised by the shared plumbing. Each message names what is wrong and where."""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error raised by ztmesh.mesh."""


class SettingsError(MeshError):
    """A setting is missing, malformed or points at something that does not exist.

    The message is one line naming the setting (environment variable or YAML key)."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class FatalMisconfiguration(MeshError):
    """Found while starting (e.g. by a readiness check): the service must not run like this at all.
    The server logs it and stops the process with a non-zero exit instead of waiting to become ready."""


class CertificateError(MeshError):
    """A certificate or key file cannot be read or does not fit the mesh's identity rules."""


class PeerIdentityError(CertificateError):
    """A client certificate the CA vouches for carries a malformed SPIFFE ID, or more than one: the
    caller cannot be identified (UNAUTHENTICATED at the edge)."""


class SpiffeIdError(MeshError, ValueError):
    """A string is not a valid SPIFFE ID."""


class InvalidField(MeshError, ValueError):
    """A request field the edge decodes (a timestamp, an enum) holds a value no core type can: the
    message starts with the field's path, like every INVALID_ARGUMENT."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class AuditUnavailable(MeshError):
    """An audit event could not be made durable, so the operation it records is refused (fail closed).

    The audit client's own errors for this (a full spool, an unreachable sink) derive from it, so the
    edge answers UNAVAILABLE without the mesh knowing the audit package."""
