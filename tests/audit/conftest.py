"""Audit fixtures: a session-wide checkpoint signer, the native module (`backend` lives in tests/audit/backends.py, a
plugin of the root conftest)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.support.servers import _missing
from ztmesh.audit.signing import LocalMlDsaSigner


@pytest.fixture(scope="session")
def signer() -> LocalMlDsaSigner:
    return LocalMlDsaSigner.generate("audit-test")


@pytest.fixture(scope="session")
def native() -> ModuleType:
    """The audit service's native code (native/audit); under CI its absence fails the tests that need it."""
    try:
        import ztmesh_audit_native
    except ImportError as exc:
        _missing("the audit service's native code (ztmesh_audit_native, native/audit)", exc)
    return ztmesh_audit_native
