"""Shared benchmark machinery: start mesh servers as real processes, drive them with an asyncio gRPC
client at a fixed concurrency, and print results beside their baseline measured in the same run.

Numbers are only comparable within one run on one machine; every table prints ratios for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
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

    def row(self, baseline: Result | None = None) -> str:
        ratio = f"{self.ops / baseline.ops:6.2f}x" if baseline and baseline.ops else "      "
        return f"{self.name:<48} {self.ops:>10.0f}/s {ratio}  p50 {self.p50_ms:7.3f} ms  p99 {self.p99_ms:7.3f} ms"


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
) -> Result:
    """Drive an RPC over mTLS from an asyncio client with `concurrency` calls in flight, spread over
    `connections` TCP connections (one each is what lets several server processes on one port share the
    load: the kernel hands each connection to one of them)."""

    async def run() -> Result:
        cert, key, ca = files.read()
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        # A local subchannel pool each: channels to one target would otherwise share one connection.
        channels = [grpc.aio.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(connections)]  # fmt: skip
        try:
            calls = [make_call(channel) for channel in channels]
            await _drive(calls, concurrency, 0.5)  # warm-up: connections, caches
            latencies, elapsed = await _drive(calls, concurrency, seconds)
        finally:
            for channel in channels:
                await channel.close()
        return summarize(name, latencies, elapsed)

    return asyncio.run(run())


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
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def audit_service(cert_dir: Path) -> Iterator[dict[str, str]]:
    """An audit service (embedded SQLite) for the services a bench starts, as the settings that point
    them at it: each of their records is then stored by audit, as in production, instead of being
    spooled to disk with a warning per retry while the measurement runs."""
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="ztmesh-bench-audit-") as data_dir,
        server_process(["ztmesh.cli", "serve", "audit"], cert_dir, port, ZTMESH_DATA_DIR=data_dir,
                       ZTMESH_LOG_LEVEL="ERROR"),
    ):  # fmt: skip
        yield {"ZTMESH_AUDIT_ADDR": f"localhost:{port}"}


RESULTS_ENV = "ZTMESH_BENCH_RESULTS"


def record(measure: str, value: float) -> None:
    """Report one measured value for the target table `make bench` prints at the end (bench/targets.py);
    a bench run on its own just prints its rows."""
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"measure": measure, "value": value}) + "\n")
