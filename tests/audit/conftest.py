"""Audit fixtures: `backend` runs a test on the embedded SQLite file and on real PostgreSQL (the shared
`postgres` fixture), each with a fresh empty database."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.factory import Backend
from ztmesh.audit.signing import LocalMlDsaSigner

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
def signer() -> LocalMlDsaSigner:
    return LocalMlDsaSigner.generate("audit-test")
