"""keys: envelope Encrypt+Decrypt of 1 KiB and ML-DSA-65 Sign+Verify, over gRPC with mTLS at 1 and
16 concurrent callers, each printed beside the same work done in-process in this run.

The ratio in-process ops/s : service ops/s is what the service layer (gRPC, TLS, authorization,
audit, store lookups) costs; the issue's target is at most 3x for envelope encryption at 16 callers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.harness import (
    Result,
    audit_service,
    dev_pki,
    free_port,
    measure_grpc,
    measure_inprocess,
    record,
    server_process,
)
from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
from ztmesh.keys.algorithms import OpenSslProvider, Purpose
from ztmesh.keys.kek import Kek
from ztmesh.keys.ledger import ShredLedger
from ztmesh.keys.manager import KeyManager
from ztmesh.keys.store import SqliteKeyStore
from ztmesh.mesh.auditing import LogAuditEmitter
from ztmesh.mesh.tls import TlsFiles

PAYLOAD = b"p" * 1024
CALLER = "spiffe://ztmesh.local/ns/ztmesh/sa/client"


def inprocess(workdir: Path) -> tuple[Result, Result]:
    import logging

    logging.getLogger("ztmesh.audit.events").setLevel(logging.WARNING)
    manager = KeyManager(
        SqliteKeyStore(workdir / "k.db"),
        OpenSslProvider(),
        Kek.generate(),
        ShredLedger(workdir / "l.json"),
        LogAuditEmitter(),
    )
    manager.create_key(CALLER, "bench-enc", Purpose.ENCRYPT)
    manager.create_key(CALLER, "bench-sig", Purpose.SIGN)

    def envelope_round_trip() -> None:
        sealed, _ = manager.encrypt(CALLER, "bench-enc", PAYLOAD)
        manager.decrypt(CALLER, sealed)

    def sign_verify() -> None:
        signature, version, _ = manager.sign(CALLER, "bench-sig", PAYLOAD)
        manager.verify(CALLER, "bench-sig", version, PAYLOAD, signature)

    return (
        measure_inprocess("in-process Encrypt+Decrypt 1 KiB", envelope_round_trip),
        measure_inprocess("in-process Sign+Verify ML-DSA-65", sign_verify),
    )


def envelope_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    stub = keys_pb2_grpc.KeyServiceStub(channel)

    async def call() -> None:
        sealed = await stub.Encrypt(keys_pb2.EncryptRequest(key_id="bench-enc", plaintext=PAYLOAD), timeout=10)
        await stub.Decrypt(keys_pb2.DecryptRequest(envelope=sealed.envelope), timeout=10)

    return call


def signature_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
    stub = keys_pb2_grpc.KeyServiceStub(channel)

    async def call() -> None:
        signed = await stub.Sign(keys_pb2.SignRequest(key_id="bench-sig", message=PAYLOAD), timeout=10)
        await stub.Verify(
            keys_pb2.VerifyRequest(
                key_id="bench-sig", key_version=signed.key_version, message=PAYLOAD, signature=signed.signature
            ),
            timeout=10,
        )

    return call


def main() -> None:
    print("== keys: envelope encryption and ML-DSA-65 signatures, service vs in-process ==")
    with dev_pki() as certs, tempfile.TemporaryDirectory() as work:
        local_envelope, local_signature = inprocess(Path(work))
        port = free_port()
        files = TlsFiles(certs / "client.crt", certs / "client.key", certs / "ca.crt")
        env = {"ZTMESH_KEK": Kek.generate().to_base64(), "ZTMESH_DATA_DIR": str(Path(work) / "svc")}
        with (
            audit_service(certs) as audit,
            server_process(
                ["ztmesh.cli", "serve", "keys"], certs, port, ZTMESH_PROCESSES="2", **env, **audit.env
            ) as keys,
        ):
            cert, key, ca = files.read()
            with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca, key, cert)) as channel:
                stub = keys_pb2_grpc.KeyServiceStub(channel)
                stub.CreateKey(keys_pb2.CreateKeyRequest(key_id="bench-enc", purpose=keys_pb2.KEY_PURPOSE_ENCRYPT))
                stub.CreateKey(keys_pb2.CreateKeyRequest(key_id="bench-sig", purpose=keys_pb2.KEY_PURPOSE_SIGN))
            print(local_envelope.row())
            for concurrency in (1, 16):
                result = measure_grpc(
                    f"gRPC Encrypt+Decrypt 1 KiB c={concurrency}",
                    f"localhost:{port}",
                    files,
                    envelope_call,
                    concurrency,
                    connections=2 if concurrency > 1 else 1,  # one each to the two processes (SO_REUSEPORT)
                    watch={"keys": keys.pid, "audit": audit.pid},
                )
                print(result.row(local_envelope), f"-> service layer costs {local_envelope.ops / result.ops:.2f}x")
                if concurrency == 16:
                    print(result.cpu_row(), f"(in process: {1e6 / local_envelope.ops:.0f} us on one core)")
                    record("keys_cost_16", local_envelope.ops / result.ops)
            print(local_signature.row())
            for concurrency in (1, 16):
                result = measure_grpc(
                    f"gRPC Sign+Verify ML-DSA-65 c={concurrency}",
                    f"localhost:{port}",
                    files,
                    signature_call,
                    concurrency,
                    connections=2 if concurrency > 1 else 1,  # one each to the two processes (SO_REUSEPORT)
                )
                print(result.row(local_signature), f"-> service layer costs {local_signature.ops / result.ops:.2f}x")


if __name__ == "__main__":
    main()
