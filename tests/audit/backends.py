"""The `backend` fixture: a test runs on the embedded SQLite file and on real PostgreSQL (the shared
`postgres` fixture), each with a fresh empty database; and `native`, the audit service's native code.
A plugin of the root conftest, so tests outside tests/audit (e.g. the attack tests in tests/security)
use them too."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.audit.factory import Backend
from tests.support.servers import _missing

_counter = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = Backend("sqlite", str(tmp_path / "audit.db"))
    else:
        postgres = request.getfixturevalue("postgres")
        made = Backend("postgres", postgres.new_database(f"audit_{next(_counter)}"), postgres)
    yield made
    made.close()


@pytest.fixture(scope="session")
def native() -> ModuleType:
    """The audit service's native code (native/audit); under CI its absence fails the tests that need it."""
    try:
        import ztmesh_audit_native
    except ImportError as exc:
        _missing("the audit service's native code (ztmesh_audit_native, native/audit)", exc)
    return ztmesh_audit_native
