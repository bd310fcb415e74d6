"""Errors of the plugins service; servicer.py maps each to one gRPC status code."""

from __future__ import annotations


class PluginsError(Exception):
    """Root of every plugins-service error."""


class InvalidPlugin(PluginsError):
    """A module or manifest is malformed, imports something not granted, or breaks the ABI."""


class SignatureRejected(PluginsError):
    """Signing is required and the signature is missing, wrong, or over other bytes."""


class PluginNotFound(PluginsError):
    pass


class PluginExists(PluginsError):
    pass


class ResourceExhausted(PluginsError):
    """Fuel, memory, stack or output size ran out."""


class DeadlineExceeded(PluginsError):
    """The wall-clock deadline passed (epoch interruption)."""


class PluginFailed(PluginsError):
    """The plugin trapped, or answered with malformed output or its own error."""


class BadInput(PluginsError):
    """The caller's input is unusable (not JSON, too large, unknown function)."""
