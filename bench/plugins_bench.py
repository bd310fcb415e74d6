"""plugins: Execute of a trivial plugin and of lgpd-analyzer on 1 KiB and 64 KiB of text, over gRPC with
mTLS at 16 concurrent callers, beside the same call in-process and beside a bare gRPC echo; plus the
in-process per-call overhead of the sandbox (fresh Store + instance per call) in microseconds."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.harness import audit_service, dev_pki, free_port, measure_grpc, measure_inprocess, record, server_process
from bench.mesh_bench import echo_call
from tests.plugins import modules
from ztmesh._proto.plugins.v1 import plugins_pb2, plugins_pb2_grpc
from ztmesh.mesh.tls import TlsFiles
from ztmesh.plugins.manifest import Manifest
from ztmesh.plugins.sandbox import Limits, Sandbox
from ztmesh.plugins.servicer import manifest_to_proto

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (
    "Paciente Maria da Silva, CPF 529.982.247-25, atendida pela Dra. Ana (CRM/SP 123456). "
    "Evolução: paciente estável, sem queixas, segue em observação clínica com dieta leve. "
)


def text_of(size: int) -> str:
    return (SAMPLE * (size // len(SAMPLE) + 1))[:size]


def execute_call(
    name: str, function: str, payload: str
) -> Callable[[grpc.aio.Channel], Callable[[], Awaitable[object]]]:
    def make(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
        stub = plugins_pb2_grpc.PluginServiceStub(channel)
        request = plugins_pb2.ExecuteRequest(name=name, function=function, input_json=payload)
        return lambda: stub.Execute(request, timeout=30)

    return make


def main() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "plugins")], check=True)
    analyzer = (ROOT / "plugins" / "build" / "lgpd-analyzer.wasm").read_bytes()
    print("== plugins: sandboxed Execute, in-process and over gRPC ==")
    roomy = Limits(
        fuel=10**11, timeout_ms=30_000, memory_bytes=512 << 20, max_input_bytes=16 << 20, max_output_bytes=16 << 20
    )
    sandbox = Sandbox(roomy)
    echo_plugin, lgpd = sandbox.compile(modules.ECHO), sandbox.compile(analyzer)
    trivial = measure_inprocess(
        "in-process trivial plugin call", lambda: sandbox.call(echo_plugin, "echo", b"{}", Limits())
    )
    print(trivial.row(), f"-> sandbox overhead {trivial.p50_ms * 1000:.0f} us/call (p50)")
    inputs = {size: json.dumps({"text": text_of(size)}) for size in (1024, 65536)}
    local = {}
    for size, payload in inputs.items():
        encoded = payload.encode()
        local[size] = measure_inprocess(
            f"in-process lgpd-analyzer {size // 1024} KiB",
            lambda data=encoded: sandbox.call(lgpd, "analyze", data, roomy),
        )
        print(local[size].row(), f"-> {local[size].ops * size / 1e6:.1f} MB/s")
    big = json.dumps({"text": text_of(4 * 1024 * 1024)}, ensure_ascii=False).encode()
    scan = measure_inprocess("in-process lgpd-analyzer 4 MiB", lambda: sandbox.call(lgpd, "analyze", big, roomy), 3)
    print(scan.row(), f"-> {scan.ops * len(big) / 1e6:.1f} MB/s")
    sandbox.close()

    with dev_pki() as certs, tempfile.TemporaryDirectory() as work:
        files = TlsFiles(certs / "client.crt", certs / "client.key", certs / "ca.crt")
        echo_port, plugins_port = free_port(), free_port()
        with server_process(["ztmesh.mesh.echo"], certs, echo_port) as echo:
            baseline = measure_grpc("bare gRPC echo c=16", f"localhost:{echo_port}", files, echo_call, 16,
                                    watch={"echo": echo.pid})  # fmt: skip
        print(baseline.row())
        print(baseline.cpu_row())
        env = {"ZTMESH_DEV_MODE": "true", "ZTMESH_DATA_DIR": work}
        with (
            audit_service(certs) as audit,
            server_process(["ztmesh.cli", "serve", "plugins"], certs, plugins_port, **env, **audit.env) as plugins,
        ):
            cert, key, ca = files.read()
            with grpc.secure_channel(f"localhost:{plugins_port}", grpc.ssl_channel_credentials(ca, key, cert)) as ch:
                stub = plugins_pb2_grpc.PluginServiceStub(ch)
                stub.RegisterPlugin(
                    plugins_pb2.RegisterPluginRequest(
                        module=modules.ECHO, manifest=manifest_to_proto(Manifest("echo", "1.0.0", ("echo",)))
                    ),
                    timeout=60,
                )
                stub.RegisterPlugin(
                    plugins_pb2.RegisterPluginRequest(
                        module=analyzer, manifest=manifest_to_proto(Manifest("lgpd-analyzer", "1.0.0", ("analyze",)))
                    ),
                    timeout=60,
                )
            target = f"localhost:{plugins_port}"
            result = measure_grpc("gRPC Execute trivial c=16", target, files, execute_call("echo", "echo", "{}"), 16,
                                  watch={"plugins": plugins.pid, "audit": audit.pid})  # fmt: skip
            print(result.row(baseline), f"-> {result.ops / baseline.ops:.0%} of the bare echo")
            print(result.cpu_row(), f"(CPU-bound here: {baseline.cpu_total_us / result.cpu_total_us:.2f}x the echo)")
            record("plugins_trivial_16", result.ops / baseline.ops)
            for size, payload in inputs.items():
                result = measure_grpc(
                    f"gRPC Execute lgpd-analyzer {size // 1024} KiB c=16",
                    target,
                    files,
                    execute_call("lgpd-analyzer", "analyze", payload),
                    16,
                )
                print(result.row(local[size]), "(ratio to in-process)")


if __name__ == "__main__":
    main()
