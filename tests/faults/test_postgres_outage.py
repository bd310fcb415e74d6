"""The audit service's PostgreSQL crashes (`pg_ctl stop -m immediate`: SIGQUIT to the postmaster) or
freezes (SIGSTOP of every server process) under steady Decide load: decisions keep being answered from
the policy service's spool, and every acknowledged one is in the trail once PostgreSQL is back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import FaultMesh, assert_nothing_lost, tally, wait_for, wait_in_trail
from tests.support.processes import log_tail
from tests.support.servers import PostgresServer, start_postgres


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own: crashing the shared one would fail everybody else's tests. Like
    every test server it runs with synchronous_commit off by default, as some production databases do:
    audit must not acknowledge a commit a crash can still forget (it sets synchronous_commit on)."""
    server = start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


def _server_processes(postmaster: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def _restart(server: PostgresServer) -> None:
    """Start the crashed cluster again: same folder, port and user (recovery replays its WAL)."""
    argv = [str(a) for a in server.handle.process.args]  # type: ignore[union-attr]
    owner = Path(argv[argv.index("-D") + 1]).stat()
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        user = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
    with server.handle.log.open("ab") as out:
        server.handle.process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=server.handle.directory, **user
        )


def _accepting(server: PostgresServer) -> bool:
    import psycopg

    try:
        with psycopg.connect(server.dsn_for("postgres"), connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


@pytest.mark.parametrize("fault", ["stop -m immediate", "SIGSTOP"])
def test_postgres_crashing_or_freezing_under_load_loses_no_decision(
    fault_mesh: Callable[..., FaultMesh], own_postgres: PostgresServer, fault: str
) -> None:
    mesh = fault_mesh(server=own_postgres)
    postmaster = own_postgres.handle.process.pid
    with mesh.load(clients=2, rate=25) as load:
        load.wait_answers(20)
        if fault == "SIGSTOP":
            frozen = _server_processes(postmaster)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
        else:
            os.kill(postmaster, signal.SIGQUIT)  # what `pg_ctl stop -m immediate` sends
            own_postgres.handle.process.wait(timeout=30)
        load.wait_answers(150)  # ~3 s of decisions without a database behind audit
        if fault == "SIGSTOP":
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        else:
            _restart(own_postgres)
        back = time.monotonic()
        try:
            wait_for(lambda: _accepting(own_postgres), 60, "PostgreSQL accepting connections again")
        except AssertionError as exc:  # say why: a CI run once saw the restarted cluster never answer
            raise AssertionError(f"{exc}; its log:\n{log_tail(own_postgres.handle.log, 25)}") from None
        wait_in_trail({a.decision_id for a in load.acknowledged()}, mesh.database_url, timeout=60)
        complete = time.monotonic() - back
        load.wait_answers(20)
    failed = [a for a in load.answers if a.error]
    assert not failed, failed[:3]  # policy kept answering: the spool took the records
    recovery = f"trail complete {complete:.2f}s after PostgreSQL was back"
    result = tally(f"PostgreSQL {fault} ~3 s", load, mesh.database_url, recovery=recovery)
    assert_nothing_lost(result)
