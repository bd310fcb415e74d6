"""Process plumbing for the throwaway test servers: pick a free loopback port, start a server there, wait
until it answers, retry on a port race, and stop it (also at interpreter exit) with its folder removed."""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_ATTEMPTS = 3  # a free port can be taken by another process between probing and binding: retry


class MissingComponent(RuntimeError):
    """A server binary the tests need is not installed (`make setup` installs it)."""


class ServerStartError(RuntimeError):
    """A server was found but did not come up; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(eq=False)  # identity semantics: handles live in the `_running` set
class ServerProcess:
    """A server process with its folder and log; `stop()` is idempotent and also runs at interpreter exit."""

    name: str
    process: subprocess.Popen[bytes]
    directory: Path
    log: Path
    stop_signal: int = signal.SIGTERM

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        _running.discard(self)


_running: set[ServerProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A bench script that crashes (or forgets .stop()) must not leave servers behind.
    for proc in list(_running):
        proc.stop()


def spawn(
    name: str,
    directory: Path,
    argv: Callable[[int], Sequence[str]],
    ready: Callable[[int], bool],
    *,
    stop_signal: int = signal.SIGTERM,
    timeout: float = 60.0,
    **popen: Any,
) -> tuple[ServerProcess, int]:
    """Start `argv(port)` on a free port and wait until `ready(port)`; retry on another port if it exits."""
    log = directory / f"{name}.log"
    last_error: Exception | None = None
    for _attempt in range(START_ATTEMPTS):
        port = free_port()
        with log.open("ab") as out:
            process = subprocess.Popen(list(argv(port)), stdout=out, stderr=subprocess.STDOUT, cwd=directory, **popen)
        handle = ServerProcess(name, process, directory, log, stop_signal)
        _running.add(handle)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            try:
                if ready(port):
                    return handle, port
            except Exception as exc:  # not listening yet, or still booting
                last_error = exc
            if time.monotonic() > deadline:
                tail = log_tail(log)
                handle.stop()
                raise ServerStartError(f"{name} not ready within {timeout:.0f} s ({last_error}); log:\n{tail}")
            time.sleep(0.05)
        _running.discard(handle)
    tail = log_tail(log)
    shutil.rmtree(directory, ignore_errors=True)
    raise ServerStartError(f"{name} exited while starting ({START_ATTEMPTS} attempts); log:\n{tail}")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> float:
    """Poll `condition` until it holds; return the seconds it took (AssertionError naming `what` if never).
    Tests wait for a condition, never for a fixed time."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)
    return time.monotonic() - started
