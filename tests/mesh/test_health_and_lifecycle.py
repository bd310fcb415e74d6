"""Health follows readiness, reflection lists the services, SIGTERM drains in-flight calls."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.mesh import running, settings_for
from tests.support.processes import wait_until
from ztmesh._proto.echo.v1 import echo_pb2, echo_pb2_grpc
from ztmesh.mesh.echo import ECHO_SERVICE, build_echo_app
from ztmesh.mesh.spiffe import authorize_any

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_dependencies_are_ready(pki, tmp_path):
    ready = threading.Event()
    app = build_echo_app(authorize_any())
    app.readiness = ready.is_set
    health_port = free_port()
    with running(app, settings_for(pki, tmp_path, health_port=health_port), identity="policy") as srv:
        with pki.channel("client", srv.port) as channel:
            assert health_status(channel) == NOT_SERVING
            assert health_status(channel, ECHO_SERVICE) == NOT_SERVING
            assert health_status(channel, "liveness") == SERVING
            ready.set()
            wait_until(lambda: health_status(channel) == SERVING, 10, "health SERVING")
            assert health_status(channel, ECHO_SERVICE) == SERVING
        # The plaintext probe listener (for kubelet) answers health and nothing else.
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            assert health_status(plain) == SERVING
            with pytest.raises(grpc.RpcError) as err:
                echo_pb2_grpc.EchoServiceStub(plain).Echo(echo_pb2.EchoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_lists_the_service(pki, tmp_path):
    with running(build_echo_app(authorize_any()), settings_for(pki, tmp_path), identity="policy") as srv:
        with pki.channel("client", srv.port) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {ECHO_SERVICE, "grpc.health.v1.Health"} <= names


def test_metrics_endpoint_counts_requests_per_method(pki, tmp_path):
    port = free_port()
    with running(
        build_echo_app(authorize_any()), settings_for(pki, tmp_path, metrics_port=port), identity="policy"
    ) as srv:
        with pki.channel("client", srv.port) as channel:
            for _ in range(3):
                echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest(message="m"), timeout=5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    count_line = next(
        line
        for line in body.splitlines()
        if line.startswith('ztmesh_grpc_requests_total{code="OK",method="Echo",service="echo"}')
    )
    assert float(count_line.split()[-1]) >= 3
    assert 'ztmesh_grpc_request_duration_seconds_bucket{le="0.005",method="Echo",service="echo"}' in body


def _echo_process(pki, port):
    """The echo service as its own process on `port` (its log on stderr, a pipe)."""
    env = {
        **os.environ,
        "ZTMESH_CERT_DIR": str(pki.directory),
        "ZTMESH_PORT": str(port),
        "ZTMESH_METRICS_PORT": "0",
        "ZTMESH_HEALTH_PORT": "0",
    }
    return subprocess.Popen([sys.executable, "-m", "ztmesh.mesh.echo"], env=env, stderr=subprocess.PIPE, text=True)


def test_sigterm_lets_the_in_flight_call_finish_and_exits_zero(pki):
    port = free_port()
    proc = _echo_process(pki, port)
    try:
        with pki.channel("client", port) as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            in_flight = stub.Echo.future(echo_pb2.EchoRequest(message="slow", delay_ms=1500), timeout=15)
            in_flight.initial_metadata()  # blocks until the handler has started (it sends metadata first)
            proc.send_signal(signal.SIGTERM)
            assert in_flight.result().message == "slow"
        assert proc.wait(timeout=15) == 0
        logs = proc.stderr.read()
        assert '"msg": "received SIGTERM; shutting down"' in logs
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_sigterm_delivered_to_a_worker_thread_still_stops_the_service(pki):
    """kill(2) of a service process lets the kernel hand the signal to any of its threads; Python runs the
    handler only on the main thread, and only once that thread runs bytecode again (CPython issue 85300).
    A kill aimed at one thread's id makes the kernel pick that thread: the service must still stop."""
    port = free_port()
    proc = _echo_process(pki, port)
    try:
        with pki.channel("client", port) as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
            echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest(message="m"), timeout=5)
        workers = [int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task") if int(tid) != proc.pid]
        assert workers, "the service runs no thread but its main one"
        os.kill(workers[-1], signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert '"msg": "received SIGTERM; shutting down"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
