"""Fault-scenario fixtures: `fault_mesh` builds a fresh trail database on the shared PostgreSQL, an audit
service on it and a policy service emitting to it, all real processes; the tallies are printed at the end."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import RESULTS, FaultMesh, audit_service, policy_service
from tests.support.mesh import Pki

_databases = itertools.count(1)


@pytest.fixture
def fault_mesh(pki: Pki, postgres: Any, tmp_path: Path) -> Iterator[Callable[..., FaultMesh]]:
    made: list[FaultMesh] = []

    def make(audit_env: dict[str, str] | None = None, policy_env: dict[str, str] | None = None,
             start_policy: bool = True, server: Any = None, pki: Pki = pki) -> FaultMesh:  # fmt: skip
        database_url = (server or postgres).new_database(f"faults_{next(_databases)}")
        audit = audit_service(pki, tmp_path, database_url, **(audit_env or {})).start()
        policy = policy_service(pki, tmp_path, audit, **(policy_env or {}))
        mesh = FaultMesh(pki, audit, policy, database_url)
        made.append(mesh)
        if start_policy:
            policy.start()
        return mesh

    yield make
    for mesh in made:
        mesh.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("fault scenarios: acknowledged decisions lost / stored twice / wrongly allowed")
        for line in RESULTS:
            terminalreporter.write_line(line)
