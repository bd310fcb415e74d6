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


class CertificateError(MeshError):
    """A certificate or key file cannot be read or does not fit the mesh's identity rules."""


class SpiffeIdError(MeshError):
    """A string is not a valid SPIFFE ID."""
