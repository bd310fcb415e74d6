"""A redis-server of a test's own (not the session's shared one): on a port it keeps across restarts,
with the settings a fault or attack needs (no persistence, a maxmemory policy...)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.processes import MissingComponent, ServerProcess, free_port, spawn


@dataclass
class OwnRedis:
    port: int
    directory: Path
    options: Sequence[str] = ()
    handle: ServerProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise MissingComponent("redis-server is not installed (Debian package `redis-server`)")
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.directory))  # the log; removed at stop
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(data), *self.options]  # fmt: skip
        self.handle, _ = spawn("redis", run, lambda _port: argv, lambda _port: bool(self.client().ping()))

    def stop(self) -> None:
        """Stop it. Without persistence (the default) its memory is gone; with `options` that turn
        persistence on, a start() again reads back what it saved in `directory`."""
        if self.handle is not None:
            self.handle.stop()
            self.handle = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1.0)


@contextlib.contextmanager
def own_redis(*options: str) -> Iterator[OwnRedis]:
    server = OwnRedis(free_port(), Path(tempfile.mkdtemp(prefix="ztmesh-redis-own-")), options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
