"""`python -m bench.bare_grpc_echo`: the echo service on grpc.aio alone - mTLS and one handler, none of
the mesh stack (no admission, metrics, access log or certificate reload). Not a product server: the
mesh bench runs it beside the mesh echo so that every run shows what the library itself costs per call
on this machine, the floor under every service's figures.

Reads what `bench.harness.server_process` gives a server: ZTMESH_CERT_DIR (policy.crt, policy.key,
ca.crt) and ZTMESH_PORT; serves gRPC health on the same port, which is how the harness waits for it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ztmesh._proto.echo.v1 import echo_pb2, echo_pb2_grpc


class BareEcho(echo_pb2_grpc.EchoServiceServicer):
    async def Echo(self, request: echo_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(message=request.message)


async def serve() -> None:
    certs = Path(os.environ["ZTMESH_CERT_DIR"])
    credentials = grpc.ssl_server_credentials(
        [((certs / "policy.key").read_bytes(), (certs / "policy.crt").read_bytes())],
        root_certificates=(certs / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServiceServicer_to_server(BareEcho(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_secure_port(f"[::]:{os.environ['ZTMESH_PORT']}", credentials)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve())
