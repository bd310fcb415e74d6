"""Shared benchmark machinery: start mesh servers as real processes, drive them with an asyncio gRPC
client at a fixed concurrency, and print results beside their baseline measured in the same run.

Numbers are only comparable within one run on one machine; every table prints ratios for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ztmesh.mesh.certs import init_dev_pki
from ztmesh.mesh.tls import TlsFiles


@dataclass(frozen=True)
class Result:
    name: str
    ops: float
    p50_ms: float
    p99_ms: float
    count: int
    # CPU per call (microseconds) of the load generator and of each watched process, over the measured calls
    cpu_us: tuple[tuple[str, float], ...] = ()

    def row(self, baseline: Result | None = None) -> str:
        ratio = f"{self.ops / baseline.ops:6.2f}x" if baseline and baseline.ops else "      "
        return f"{self.name:<48} {self.ops:>10.0f}/s {ratio}  p50 {self.p50_ms:7.3f} ms  p99 {self.p99_ms:7.3f} ms"

    @property
    def cpu_total_us(self) -> float:
        return sum(us for _, us in self.cpu_us)

    def cpu_row(self) -> str:
        parts = ", ".join(f"{who} {us:.0f}" for who, us in self.cpu_us)
        return f"{'  CPU per call, us':<48} {self.cpu_total_us:>10.0f}     = {parts}"


def summarize(name: str, latencies: list[float], elapsed: float) -> Result:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Result(name, len(latencies) / elapsed, statistics.median(latencies) * 1e3, p99 * 1e3, len(latencies))


def measure_inprocess(name: str, op: Callable[[], object], seconds: float = 2.0) -> Result:
    """Time one operation in a loop on this thread: the cost without any service layer."""
    op()  # warm-up
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        op()
        latencies.append(time.perf_counter() - t)
    return summarize(name, latencies, time.perf_counter() - start)


async def _drive(
    calls: list[Callable[[], Awaitable[object]]], concurrency: int, seconds: float
) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(call: Callable[[], Awaitable[object]]) -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(concurrency)))
    return latencies, time.perf_counter() - start


def measure_grpc(
    name: str,
    target: str,
    files: TlsFiles,
    make_call: Callable[[grpc.aio.Channel], Callable[[], Awaitable[object]]],
    concurrency: int,
    seconds: float = 3.0,
    connections: int = 1,
    watch: Mapping[str, int] | None = None,
) -> Result:
    """Drive an RPC over mTLS from an asyncio client with `concurrency` calls in flight, spread over
    `connections` TCP connections (one each is what lets several server processes on one port share the
    load: the kernel hands each connection to one of them). With `watch` (name -> pid), the result also
    says what each call cost in CPU: this client, and each watched process with its children."""
    watched = {who: process_tree(pid) for who, pid in (watch or {}).items()}

    async def run() -> Result:
        cert, key, ca = files.read()
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        # A local subchannel pool each: channels to one target would otherwise share one connection.
        channels = [grpc.aio.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(connections)]  # fmt: skip
        try:
            calls = [make_call(channel) for channel in channels]
            await _drive(calls, concurrency, 0.5)  # warm-up: connections, caches
            before = _cpu_now(watched)
            latencies, elapsed = await _drive(calls, concurrency, seconds)
            after = _cpu_now(watched)
        finally:
            for channel in channels:
                await channel.close()
        result = summarize(name, latencies, elapsed)
        if not watched:
            return result
        calls_made = max(len(latencies), 1)
        cpu = tuple((who, (after[who] - before[who]) / calls_made * 1e6) for who in after)
        return dataclasses.replace(result, cpu_us=cpu)

    return asyncio.run(run())


def process_cpu(pid: int) -> float:
    """Seconds of CPU process `pid` has used (user + system, all its threads), from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sockets_held(pid: int, port: int) -> dict[int, dict[str, int]]:
    """For each process of `pid`'s tree that holds TCP sockets on local `port`: how many it holds in each
    state (/proc/net/tcp's code: 0A LISTEN, 01 ESTABLISHED)."""
    states = {}  # socket inode -> state
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[f"socket:[{fields[9]}]"] = fields[3]
    held: dict[int, dict[str, int]] = {}
    for member in process_tree(pid):
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{member}/fd").iterdir()]
        except OSError:  # gone, or a descriptor closed meanwhile
            continue
        for state in (states[link] for link in links if link in states):
            held.setdefault(member, {}).setdefault(state, 0)
            held[member][state] += 1
    return held


def _listening_processes(pid: int, port: int) -> int:
    """How many processes of `pid`'s tree listen on TCP `port` (SO_REUSEPORT: each has its own socket)."""
    return sum(1 for states in _sockets_held(pid, port).values() if "0A" in states)


def connection_split(pid: int, port: int) -> list[int]:
    """The clients' connections to `port` each listening process of `pid`'s tree serves, most first: with
    SO_REUSEPORT the kernel places each new connection by a hash of its addresses, so a few of them may
    all land on one process."""
    held = _sockets_held(pid, port).values()
    return sorted((states.get("01", 0) for states in held if "0A" in states), reverse=True)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants now (a server with ZTMESH_PROCESSES > 1 forks its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def _cpu_now(watched: Mapping[str, list[int]]) -> dict[str, float]:
    cpu = {"client": time.process_time()}  # this process: the load generator
    cpu.update((who, sum(map(process_cpu, pids))) for who, pids in watched.items())
    return cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dev_pki() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ztmesh-bench-") as tmp:
        init_dev_pki(Path(tmp), "ztmesh.local", "ztmesh")
        yield Path(tmp)


@contextlib.contextmanager
def server_process(
    args: list[str], cert_dir: Path, port: int, service: str = "", **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m <args>` as a mesh server on `port` and wait until its health says SERVING."""
    full_env = {
        **os.environ,
        "ZTMESH_CERT_DIR": str(cert_dir),
        "ZTMESH_PORT": str(port),
        "ZTMESH_METRICS_PORT": "0",
        "ZTMESH_HEALTH_PORT": "0",
        "ZTMESH_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", *args], env=full_env)
    try:
        files = TlsFiles(cert_dir / "client.crt", cert_dir / "client.key", cert_dir / "ca.crt")
        cert, key, ca = files.read()
        deadline = time.monotonic() + 60
        with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca, key, cert)) as channel:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args} exited with {proc.returncode}")
                try:
                    status = (
                        health_pb2_grpc.HealthStub(channel)
                        .Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                        .status
                    )
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args} not SERVING after 60 s")
                time.sleep(0.1)
        # The first copy to answer is not all of them: connections made before the others listen all go
        # to it, and the run measures one process where it meant several.
        processes = int(full_env.get("ZTMESH_PROCESSES", "1"))
        while _listening_processes(proc.pid, port) < processes:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args}: not all {processes} processes listen on port {port} after 60 s")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class AuditService:
    env: dict[str, str]  # the settings that point a service at it
    pid: int


@contextlib.contextmanager
def audit_service(cert_dir: Path) -> Iterator[AuditService]:
    """An audit service (embedded SQLite) for the services a bench starts: each of their records is then
    stored by audit, as in production, instead of being spooled to disk with a warning per retry while
    the measurement runs."""
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="ztmesh-bench-audit-") as data_dir,
        server_process(["ztmesh.cli", "serve", "audit"], cert_dir, port, ZTMESH_DATA_DIR=data_dir,
                       ZTMESH_LOG_LEVEL="ERROR") as audit,
    ):  # fmt: skip
        yield AuditService({"ZTMESH_AUDIT_ADDR": f"localhost:{port}"}, audit.pid)


RESULTS_ENV = "ZTMESH_BENCH_RESULTS"


def record(measure: str, value: float) -> None:
    """Report one measured value for the target table `make bench` prints at the end (bench/targets.py);
    a bench run on its own just prints its rows."""
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"measure": measure, "value": value}) + "\n")
