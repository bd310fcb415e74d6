"""A bare echo service on the shared server stack: the baseline benchmarks compare each service to,
and the simplest target for tests of the plumbing. `ztmesh serve` never registers it."""

from __future__ import annotations

import asyncio

import grpc

from ztmesh._proto.echo.v1 import echo_pb2, echo_pb2_grpc
from ztmesh.mesh.interceptors import current_caller
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.spiffe import Authorizer

ECHO_SERVICE = "ztmesh.echo.v1.EchoService"


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):
    async def Echo(self, request: echo_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> echo_pb2.EchoResponse:
        if request.delay_ms:
            await context.send_initial_metadata(())  # tells a caller the call is inside the handler now
            await asyncio.sleep(min(request.delay_ms, 60_000) / 1000)
        caller = current_caller()
        return echo_pb2.EchoResponse(message=request.message, caller_spiffe_id=str(caller) if caller else "")


def build_echo_app(authorizer: Authorizer, ready: bool = True) -> ServiceApp:
    return ServiceApp(
        name="echo",
        register=lambda server: echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), server),
        service_names=(ECHO_SERVICE,),
        rules={f"/{ECHO_SERVICE}/Echo": authorizer},
        readiness=lambda: ready,
    )


def main() -> None:
    """`python -m ztmesh.mesh.echo`: serve the echo baseline on the real bootstrap, like `ztmesh serve`."""
    import argparse

    from ztmesh.mesh.launch import load_mesh_settings
    from ztmesh.mesh.log import configure_logging
    from ztmesh.mesh.server import MeshServer
    from ztmesh.mesh.spiffe import authorize_member_of

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--identity", default="policy", help="whose certificate the server presents")
    identity = parser.parse_args().identity
    settings = load_mesh_settings()
    configure_logging("echo", settings.log_level)
    app = build_echo_app(authorize_member_of(settings.trust_domain))
    MeshServer(app, settings, identity=identity).run_until_signalled()


if __name__ == "__main__":
    main()
