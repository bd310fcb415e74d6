"""The `backend` fixture: a test runs on the embedded SQLite file and on real PostgreSQL (the shared
`postgres` fixture), each with a fresh empty database. A plugin of the root conftest, so tests outside
tests/audit (e.g. the attack tests in tests/security) run on both stores too."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.factory import Backend

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
