"""Audit fixtures: a session-wide checkpoint signer (`backend` and `native` live in tests/audit/backends.py,
a plugin of the root conftest)."""

from __future__ import annotations

import pytest

from ztmesh.audit.signing import LocalMlDsaSigner


@pytest.fixture(scope="session")
def signer() -> LocalMlDsaSigner:
    return LocalMlDsaSigner.generate("audit-test")

