"""AuditService over real mTLS on SQLite and PostgreSQL: append/query/verify/checkpoint, who may call,
bad input, an audit outage seen from an emitter, and the `ztmesh audit verify` command."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from tests.audit.factory import Backend, events
from tests.support.mesh import running, settings_for
from tests.support.processes import free_port
from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh.audit.app import build_app
from ztmesh.audit.chain import Checkpoint, CheckpointKind
from ztmesh.audit.client import GrpcAuditSink
from ztmesh.audit.errors import EventRejected
from ztmesh.audit.servicer import event_to_proto
from ztmesh.audit.signing import load_public_keys
from ztmesh.audit.spool import SpoolEmitter, SpoolSettings
from ztmesh.mesh.auditing import AuditEvent
from ztmesh.mesh.loop import run_on_loop
from ztmesh.mesh.server import MeshServer
from ztmesh.mesh.tls import aio_secure_channel

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class AuditServer:
    server: MeshServer
    backend: Backend
    data_dir: Path

    @property
    def port(self) -> int:
        return self.server.port

    def stub(self, pki, identity: str) -> audit_pb2_grpc.AuditServiceStub:
        return audit_pb2_grpc.AuditServiceStub(pki.channel(identity, self.port))

    @property
    def public_key(self) -> Path:
        return self.data_dir / "audit" / "checkpoint-public.pem"


@contextlib.contextmanager
def audit_service(pki, backend: Backend, data_dir: Path, port: int = 0) -> Iterator[AuditServer]:
    database_url = backend.dsn if backend.kind == "postgres" else ""
    settings = settings_for(pki, data_dir, database_url=database_url, port=port)
    with running(build_app(settings), settings) as server:
        yield AuditServer(server, backend, data_dir)


@pytest.fixture
def audit(pki, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditServer]:
    monkeypatch.setenv("ZTMESH_AUDIT_CHECKPOINT_EVERY", "10")
    if backend.kind == "sqlite":
        backend.dsn = str(tmp_path / "audit" / "audit.db")  # where the service keeps its embedded trail
    with audit_service(pki, backend, tmp_path) as server:
        yield server


def request_of(batch) -> audit_pb2.AppendRequest:
    return audit_pb2.AppendRequest(events=[event_to_proto(e) for e in batch])


def count(server: AuditServer, pki) -> int:
    return server.stub(pki, "client").Verify(audit_pb2.VerifyRequest(), timeout=10).records_checked


def assert_stored_exactly(server: AuditServer, pki, emitted: list[str]) -> None:
    """The trail holds each emitted event once, nothing else, and verifies."""
    operator = server.stub(pki, "client")
    stored = [r.event.event_id for reply in operator.Query(audit_pb2.QueryRequest(page_size=100), timeout=10)
              for r in reply.records]  # fmt: skip
    assert sorted(stored) == sorted(emitted)
    assert operator.Verify(audit_pb2.VerifyRequest(), timeout=10).ok


def test_append_query_verify_and_signed_checkpoints(pki, audit: AuditServer) -> None:
    sink = GrpcAuditSink(pki.channel("policy", audit.port))
    batch = events(25)
    assert [r.sequence for r in sink.append(batch)] == list(range(1, 26))
    assert all(r.duplicate for r in sink.append(batch[20:]))  # a retried batch never duplicates

    operator = audit.stub(pki, "client")
    request = audit_pb2.QueryRequest(subject="user-1", order=audit_pb2.ORDER_OLDEST_FIRST, page_size=2)
    seen = []
    while True:
        replies = list(operator.Query(request, timeout=10))
        seen += [r.sequence for reply in replies for r in reply.records]
        if not replies[-1].next_page_token:
            break
        request.page_token = replies[-1].next_page_token
    assert seen == [i + 1 for i in range(25) if i % 5 == 1]
    record = next(iter(operator.Query(audit_pb2.QueryRequest(page_size=1), timeout=10))).records[0]
    assert record.emitter_spiffe_id == "spiffe://ztmesh.local/ns/ztmesh/sa/policy"
    assert json.loads(record.event.details_json)["client_ip"].endswith(".0")

    verified = operator.Verify(audit_pb2.VerifyRequest(), timeout=10)
    assert (verified.ok, verified.records_checked, verified.checkpoints_checked) == (True, 25, 1)
    checkpoint = audit.stub(pki, "keys").GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
    assert checkpoint.kind == audit_pb2.CHECKPOINT_KIND_HEAD and checkpoint.algorithm == "ML-DSA-65"
    rebuilt = Checkpoint(checkpoint.checkpoint_id, CheckpointKind.HEAD, checkpoint.sequence, checkpoint.head_hash,
                         checkpoint.time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                         checkpoint.key_id, checkpoint.algorithm, tree_root=checkpoint.tree_root)  # fmt: skip
    assert rebuilt.payload() == checkpoint.signed_payload  # clients can check what was signed…
    verifier = load_public_keys([audit.public_key])
    signed = dataclasses.replace(rebuilt, key_version=checkpoint.key_version, signature=checkpoint.signature)
    assert signed.signature_valid(verifier)  # …and that the published key signed it


@pytest.mark.parametrize(
    ("identity", "service", "code"),
    [("envoy", "policy", "PERMISSION_DENIED"), ("client", "policy", "PERMISSION_DENIED"),
     ("policy", "keys", "PERMISSION_DENIED")],
)  # fmt: skip
def test_only_emitters_append_and_only_as_themselves(pki, audit: AuditServer, identity, service, code) -> None:
    batch = events(2)
    batch[1] = dataclasses.replace(batch[1], service=service)
    with pytest.raises(grpc.RpcError) as caught:
        audit.stub(pki, identity).Append(request_of(batch), timeout=10)
    assert caught.value.code().name == code
    assert count(audit, pki) == 0


def _raw_append(pki, audit: AuditServer, payload: bytes) -> grpc.RpcError:
    channel = pki.channel("policy", audit.port)
    call = channel.unary_unary("/ztmesh.audit.v1.AuditService/Append", request_serializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        call(payload, timeout=10)
    return caught.value


def test_bad_input_is_refused_clearly_and_the_service_keeps_serving(pki, audit: AuditServer) -> None:
    stub = audit.stub(pki, "policy")
    good = request_of(events(1)).SerializeToString()
    invalid_utf8 = good.replace(b"user-0", b"user\xff\xfe")
    err = _raw_append(pki, audit, invalid_utf8)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.details()

    cases = [
        (lambda m: setattr(m.events[1], "details_json", json.dumps({"x": "y" * 70_000})), "events[1].details"),
        (lambda m: setattr(m.events[1], "details_json", '{"a": 1, "a": 2}'), "appears twice"),
        (lambda m: m.events[1].ClearField("time"), "events[1].time"),
        (lambda m: setattr(m.events[0], "action", ""), "events[0].action"),
        (lambda m: setattr(m.events[0], "event_id", "42"), "events[0].event_id"),
        (lambda m: setattr(m.events[0], "schema_version", 7), "schema_version"),
    ]
    for damage, words in cases:
        message = request_of(events(2))
        damage(message)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Append(message, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, words
        assert words in caught.value.details()
    assert count(audit, pki) == 0  # nothing of any refused batch was stored
    assert len(stub.Append(request_of(events(3)), timeout=10).results) == 3


def test_tampering_is_reported_by_the_verify_rpc(pki, audit: AuditServer) -> None:
    GrpcAuditSink(pki.channel("policy", audit.port)).append(events(30))
    audit.backend.tamper("UPDATE audit_records SET details = '{}' WHERE sequence = 7")
    reply = audit.stub(pki, "client").Verify(audit_pb2.VerifyRequest(), timeout=10)
    assert (reply.ok, reply.first_bad_sequence, reply.reason) == (False, 7, audit_pb2.VERIFY_PROBLEM_HASH_MISMATCH)
    cli = subprocess.run(
        [sys.executable, "-m", "ztmesh.cli", "audit", "verify", "--dsn", audit.backend.dsn,
         "--public-key", str(audit.public_key)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 1 and "BROKEN at sequence 7 (hash_mismatch)" in cli.stdout, cli.stdout + cli.stderr


def test_events_emitted_while_audit_is_stopped_are_stored_once_after_restart(
    pki, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.kind == "sqlite":
        backend.dsn = str(tmp_path / "audit" / "audit.db")
    port = free_port()
    sink = GrpcAuditSink(pki.channel("policy", port), timeout=2)
    emitter = SpoolEmitter(sink, SpoolSettings(tmp_path / "spool", retry_initial=0.05, retry_max=0.5))
    emitted = []
    for i in range(30):  # audit is not running: each emit returns once the event is in the spool
        event = AuditEvent(service="policy", action="decide", outcome="DENY", subject=f"s{i}", details={"i": i})
        emitter.emit(event)
        emitted.append(event.event_id)
    assert emitter.pending() == 30
    with audit_service(pki, backend, tmp_path, port=port) as server:
        assert emitter.flush(timeout=60)
        emitter.close()
        assert_stored_exactly(server, pki, emitted)


class CountingLoopSink(GrpcAuditSink):
    """The real gRPC sink, counting the Appends sent from the loop (how many groups were committed)."""

    def __init__(self, pki, port: int) -> None:
        self._aio: list[grpc.aio.Channel] = []
        super().__init__(pki.channel("policy", port), timeout=2, aio_channel=self.loop_channel)
        self.loop_appends: list[int] = []
        self._pki, self._port = pki, port

    def loop_channel(self) -> grpc.aio.Channel:
        if not self._aio:  # made on the loop that uses it
            self._aio.append(aio_secure_channel(f"localhost:{self._port}", self._pki.files("policy")))
        return self._aio[0]

    async def append_async(self, events, timeout=None):  # type: ignore[no-untyped-def]
        self.loop_appends.append(len(events))
        return await super().append_async(events, timeout)


def test_events_emitted_on_the_loop_are_grouped_spooled_while_audit_is_away_and_stored_once(
    pki, backend: Backend, tmp_path: Path
) -> None:
    if backend.kind == "sqlite":
        backend.dsn = str(tmp_path / "audit" / "audit.db")
    port = free_port()
    sink = CountingLoopSink(pki, port)
    emitter = SpoolEmitter(sink, SpoolSettings(tmp_path / "spool", retry_initial=0.05, retry_max=0.5))

    async def emit_all(count: int, tag: str) -> list[str]:
        batch = [
            AuditEvent(service="policy", action="decide", outcome="DENY", subject=f"{tag}{i}") for i in range(count)
        ]
        await asyncio.gather(*(emitter.emit_async(event) for event in batch))
        return [event.event_id for event in batch]

    # Audit is not running: every emit returns once its event is in the spool (one group, one fsync).
    emitted = run_on_loop(emit_all(20, "away"))
    assert emitter.pending() == 20
    with audit_service(pki, backend, tmp_path, port=port) as server:
        assert emitter.flush(timeout=60)
        deadline = time.monotonic() + 10
        while not emitter.reaching_audit:  # the shipper found nothing left and says audit answers again
            assert time.monotonic() < deadline
            time.sleep(0.02)
        run_on_loop(asyncio.wait_for(sink.loop_channel().channel_ready(), 10))  # reconnected after the outage
        sink.loop_appends.clear()
        emitted += run_on_loop(emit_all(30, "up"))  # straight to audit: 30 concurrent events, one Append
        assert sink.loop_appends == [30] and emitter.pending() == 0
        emitter.close()
        assert_stored_exactly(server, pki, emitted)


def test_grpc_sink_names_the_refused_event(pki, audit: AuditServer) -> None:
    sink = GrpcAuditSink(pki.channel("policy", audit.port))
    batch = events(3)
    batch[2] = dataclasses.replace(batch[2], service="plugins")
    with pytest.raises(EventRejected) as caught:
        sink.append(batch)
    assert caught.value.event_id == batch[2].event_id
    assert datetime.now(UTC)  # the service is still there:
    assert len(sink.append(events(1))) == 1


def test_checkpoints_signed_by_the_keys_service(pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ztmesh.keys.app import build_app as build_keys_app

    monkeypatch.setenv("ZTMESH_KEK", "A" * 43 + "=")
    keys_settings = settings_for(pki, tmp_path / "keys")
    with running(build_keys_app(keys_settings), keys_settings) as keys:
        monkeypatch.setenv("ZTMESH_AUDIT_SIGNER", "keys")
        monkeypatch.setenv("ZTMESH_AUDIT_CHECKPOINT_EVERY", "5")
        settings = settings_for(pki, tmp_path / "audit", keys_addr=f"localhost:{keys.port}")
        with running(build_app(settings), settings) as server:
            operator = audit_pb2_grpc.AuditServiceStub(pki.channel("client", server.port))
            deadline = time.monotonic() + 30
            while not _serving(pki, server):  # readiness creates the signing key at the keys service
                assert time.monotonic() < deadline
                time.sleep(0.1)
            GrpcAuditSink(pki.channel("policy", server.port)).append(events(12))
            checkpoint = operator.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
            assert (checkpoint.key_id, checkpoint.key_version, checkpoint.sequence) == ("audit-checkpoints", 1, 12)
            assert operator.Verify(audit_pb2.VerifyRequest(), timeout=10).ok
            # Any mesh workload may fetch the public key and check the signature itself, offline.
            from ztmesh._proto.keys.v1 import keys_pb2, keys_pb2_grpc
            from ztmesh.audit.signing import PublicKeyVerifier, load_public_key

            public = keys_pb2_grpc.KeyServiceStub(pki.channel("envoy", keys.port)).GetPublicKey(
                keys_pb2.GetPublicKeyRequest(key_id="audit-checkpoints", version=1), timeout=10
            )
            verifier = PublicKeyVerifier([load_public_key(public.public_key)])
            from ztmesh.audit.chain import Signature

            signature = Signature(checkpoint.key_id, checkpoint.key_version, checkpoint.algorithm, checkpoint.signature)
            assert verifier.verify(checkpoint.signed_payload, signature)
            assert not verifier.verify(checkpoint.signed_payload.replace(b'"sequence":12', b'"sequence":13'), signature)


def _serving(pki, server: MeshServer) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(pki.channel("client", server.port))
    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING


def test_query_by_decision_id(pki, audit: AuditServer) -> None:
    """A decision id from an Envoy header or a 403 body finds its record (and only it)."""
    batch = events(9)
    GrpcAuditSink(pki.channel("policy", audit.port)).append(batch)
    wanted = batch[4]
    stub = audit.stub(pki, "client")
    found = [r for page in stub.Query(audit_pb2.QueryRequest(decision_id=wanted.decision_id), timeout=10)
             for r in page.records]  # fmt: skip
    assert [(r.event.event_id, r.event.decision_id) for r in found] == [(wanted.event_id, wanted.decision_id)]
    nothing = [r for page in stub.Query(audit_pb2.QueryRequest(decision_id="no-such-decision"), timeout=10)
               for r in page.records]  # fmt: skip
    assert nothing == []


def test_query_command(pki, audit: AuditServer) -> None:
    GrpcAuditSink(pki.channel("policy", audit.port)).append(events(12))
    env = {**__import__("os").environ, "ZTMESH_CERT_DIR": str(pki.directory),
           "ZTMESH_AUDIT_ADDR": f"localhost:{audit.port}"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "ztmesh.cli", "audit", "query", "--subject", "user-1", "--order", "oldest"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [int(r["sequence"]) for r in lines] == [2, 7, 12]


def test_each_emitter_process_gets_its_own_spool(pki, tmp_path: Path) -> None:
    from ztmesh.audit.client import audit_emitter

    settings = settings_for(pki, tmp_path, audit_addr="localhost:1")
    first, second = audit_emitter(settings, "policy"), audit_emitter(settings, "policy")
    assert {first.settings.directory.name, second.settings.directory.name} == {"0", "1"}
    first.close(flush_timeout=0)
    second.close(flush_timeout=0)
    again = audit_emitter(settings, "policy")  # a restart takes the freed slot back (and replays it)
    assert again.settings.directory.name == "0"
    again.close(flush_timeout=0)
