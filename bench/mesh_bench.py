"""Baseline: the bare echo service on the shared server stack (mTLS + interceptor) at 1/16/64
concurrent callers. Every service benchmark compares itself to this number."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from bench.harness import dev_pki, free_port, measure_grpc, record, server_process
from ztmesh._proto.echo.v1 import echo_pb2, echo_pb2_grpc
from ztmesh.mesh.tls import TlsFiles


def echo_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    request = echo_pb2.EchoRequest(message="x" * 64)
    return lambda: stub.Echo(request, timeout=10)


def main() -> None:
    print("== mesh: bare echo over mTLS on the shared server stack ==")
    with dev_pki() as certs:
        port = free_port()
        files = TlsFiles(certs / "client.crt", certs / "client.key", certs / "ca.crt")
        with server_process(["ztmesh.mesh.echo"], certs, port) as server:
            for concurrency in (1, 16, 64):
                result = measure_grpc(f"echo c={concurrency}", f"localhost:{port}", files, echo_call, concurrency,
                                      watch={"server": server.pid})  # fmt: skip
                print(result.row())
                if concurrency == 16:
                    print(result.cpu_row())
                    record("echo_16", result.ops)
                    mesh = result
        # The floor: the same echo on grpc.aio with none of the mesh stack, same certificates, same client.
        port = free_port()
        with server_process(["bench.bare_grpc_echo"], certs, port) as server:
            bare = measure_grpc("grpc.aio alone (no mesh stack), echo c=16", f"localhost:{port}", files, echo_call, 16,
                                watch={"server": server.pid})  # fmt: skip
            print(bare.row(), f"the mesh stack serves {mesh.ops / bare.ops:.2f}x of it")
            print(bare.cpu_row())
            record("floor_bare_server_us", dict(bare.cpu_us)["server"])
            record("floor_bare_client_us", dict(bare.cpu_us)["client"])


if __name__ == "__main__":
    main()
