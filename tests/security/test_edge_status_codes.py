"""Attack: malformed fields, undecodable bytes and an audit outage against the four services' gRPC edge.

A malformed field is INVALID_ARGUMENT naming the field, an undecodable request INVALID_ARGUMENT naming
the message, an audit outage UNAVAILABLE (Decide: a DENY with the audit fault) - never UNKNOWN; and
every state-changing RPC leaves an audit record with its caller in the real audit store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from tests.plugins import modules
from tests.support.mesh import Pki, running
from tests.support.processes import free_port
from tests.support.service_mesh import REPO, ServiceMesh, build, service_mesh, status_of
from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh._proto.keys.v1 import keys_pb2
from ztmesh._proto.plugins.v1 import plugins_pb2
from ztmesh._proto.policy.v1 import policy_pb2
from ztmesh.plugins.manifest import Manifest
from ztmesh.plugins.servicer import manifest_to_proto

CLIENT = "spiffe://ztmesh.local/ns/ztmesh/sa/client"
ECHO = Manifest("echo", "1.0.0", ("echo",))
FAR_FUTURE = timestamp_pb2.Timestamp(seconds=2**62)  # no datetime holds it
TRUNCATED = b"\x0a\x05ab"  # field 1, length 5, two bytes follow
Call = Callable[[ServiceMesh], Any]


def register_echo(mesh: ServiceMesh, version: str = "1.0.0") -> plugins_pb2.Plugin:
    manifest = Manifest("echo", version, ("echo",))
    request = plugins_pb2.RegisterPluginRequest(module=modules.ECHO, manifest=manifest_to_proto(manifest))
    return mesh.stub("plugins").RegisterPlugin(request, timeout=30)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("policy") / "rego"
    shutil.copytree(REPO / "policies" / "rego", target)
    return target


@pytest.fixture(scope="module")
def mesh(pki, tmp_path_factory, policy_dir) -> Iterator[ServiceMesh]:
    with service_mesh(pki, tmp_path_factory.mktemp("mesh"), {"ZTMESH_POLICY_DIR": str(policy_dir)}) as running_mesh:
        register_echo(running_mesh)
        yield running_mesh


def raw(service: str, method: str, payload: bytes, streaming: bool = False) -> Call:
    """An RPC carrying `payload` as its request bytes, as is."""
    path = f"/ztmesh.{service}.v1.{method}"

    def call(mesh: ServiceMesh) -> Any:
        channel = mesh.pki.channel("client", mesh.servers[service].port)
        if streaming:
            return list(channel.unary_stream(path)(payload, timeout=10))
        return channel.unary_unary(path)(payload, timeout=10)

    return call


def manifest(**changes: Any) -> plugins_pb2.Manifest:
    message = manifest_to_proto(ECHO)
    for name, value in changes.items():
        setattr(message, name, value)
    return message


def audit_event(**changes: Any) -> audit_pb2.AuditEvent:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    fields = {"event_id": "0190f0e0-0000-7000-8000-000000000001", "service": "keys", "action": "keys.test",
              "outcome": "OK", "time": now, **changes}  # fmt: skip
    return audit_pb2.AuditEvent(**fields)


def decide_request(subject: str) -> policy_pb2.DecideRequest:
    return policy_pb2.DecideRequest(
        subject=policy_pb2.Subject(id=subject, roles=["physician"]),
        resource=policy_pb2.Resource(type="patient_record", classification="patient_data", id="p-42"),
        action="read",
    )


# (name, call, the field or message the refusal must name)
BAD_FIELDS: list[tuple[str, Call, str]] = [
    (
        "keys-key-id",
        lambda m: m.stub("keys").CreateKey(keys_pb2.CreateKeyRequest(key_id="Bad Id!", purpose=1)),
        "key_id",
    ),
    ("keys-purpose", lambda m: m.stub("keys").CreateKey(keys_pb2.CreateKeyRequest(key_id="k1")), "purpose"),
    (
        "keys-algorithm",
        lambda m: m.stub("keys").CreateKey(keys_pb2.CreateKeyRequest(key_id="k1", purpose=1, algorithm=99)),
        "algorithm",
    ),
    ("keys-undecodable", raw("keys", "KeyService/CreateKey", TRUNCATED), "ztmesh.keys.v1.CreateKeyRequest"),
    (
        "plugins-manifest-version",
        lambda m: m.stub("plugins").RegisterPlugin(
            plugins_pb2.RegisterPluginRequest(module=modules.ECHO, manifest=manifest(version="one"))
        ),
        "manifest.version",
    ),
    (
        "plugins-function",
        lambda m: m.stub("plugins").Execute(plugins_pb2.ExecuteRequest(name="echo", function="nope", input_json="{}")),
        "function",
    ),
    (
        "plugins-undecodable",
        raw("plugins", "PluginService/ListPlugins", TRUNCATED),
        "ztmesh.plugins.v1.ListPluginsRequest",
    ),
    (
        "policy-assurance",
        lambda m: m.stub("policy").Decide(policy_pb2.DecideRequest(subject=policy_pb2.Subject(id="a", assurance=42))),
        "subject.assurance",
    ),
    (
        "policy-context-time",
        lambda m: m.stub("policy").Decide(
            policy_pb2.DecideRequest(
                subject=policy_pb2.Subject(id="a"), context=policy_pb2.RequestContext(time=FAR_FUTURE)
            )
        ),
        "context.time",
    ),
    (
        "policy-signal-time",
        lambda m: m.stub("policy").ReportSignal(
            policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="anomaly", time=FAR_FUTURE)
        ),
        "time",
    ),
    (
        "policy-signal-severity",
        lambda m: m.stub("policy").ReportSignal(
            policy_pb2.ReportSignalRequest(subject_id="dr.ana", kind="anomaly", severity=5)
        ),
        "severity",
    ),
    ("policy-undecodable", raw("policy", "PolicyService/Decide", TRUNCATED), "ztmesh.policy.v1.DecideRequest"),
    (
        "audit-query-order",
        lambda m: list(m.stub("audit").Query(audit_pb2.QueryRequest(order=99))),
        "order",
    ),
    (
        "audit-query-start-time",
        lambda m: list(m.stub("audit").Query(audit_pb2.QueryRequest(start_time=FAR_FUTURE))),
        "start_time",
    ),
    (
        "audit-event-time",
        lambda m: m.stub("audit", "keys").Append(audit_pb2.AppendRequest(events=[audit_event(time=FAR_FUTURE)])),
        "events[0].time",
    ),
    (
        "audit-event-action",
        lambda m: m.stub("audit", "keys").Append(audit_pb2.AppendRequest(events=[audit_event(action="")])),
        "events[0].action",
    ),
    (
        "audit-undecodable",
        raw("audit", "AuditService/Query", TRUNCATED, streaming=True),
        "ztmesh.audit.v1.QueryRequest",
    ),
]


@pytest.mark.parametrize(("call", "field"), [row[1:] for row in BAD_FIELDS], ids=[row[0] for row in BAD_FIELDS])
def test_a_malformed_field_is_invalid_argument_naming_it(mesh, call, field) -> None:
    code, details = status_of(lambda: call(mesh))
    assert (code, field in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details


def test_a_signal_with_an_impossible_time_is_audited_as_refused(mesh) -> None:
    request = policy_pb2.ReportSignalRequest(subject_id="dr.impossible", kind="anomaly", time=FAR_FUTURE)
    assert (
        status_of(lambda: mesh.stub("policy").ReportSignal(request, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT
    )
    records = mesh.wait_for_records(action="policy.signal", subject="dr.impossible", outcome="REFUSED")
    assert [r.event.caller_spiffe_id for r in records] == [CLIENT]
    assert json.loads(records[0].event.details_json)["error"].startswith("time: ")


def _state_changes(mesh: ServiceMesh, policy_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Make each state-changing RPC once, as the client; yield the audit query that must find it."""
    keys = mesh.stub("keys")
    keys.CreateKey(keys_pb2.CreateKeyRequest(key_id="edge-key", purpose=keys_pb2.KEY_PURPOSE_ENCRYPT), timeout=10)
    yield "CreateKey", {"action": "keys.create", "outcome": "OK"}
    keys.RotateKey(keys_pb2.RotateKeyRequest(key_id="edge-key"), timeout=10)
    yield "RotateKey", {"action": "keys.rotate"}
    keys.DisableKeyVersion(keys_pb2.KeyVersionRequest(key_id="edge-key", version=1), timeout=10)
    yield "DisableKeyVersion", {"action": "keys.disable"}
    keys.EnableKeyVersion(keys_pb2.KeyVersionRequest(key_id="edge-key", version=1), timeout=10)
    yield "EnableKeyVersion", {"action": "keys.enable"}
    keys.DestroyKeyVersion(keys_pb2.KeyVersionRequest(key_id="edge-key", version=1), timeout=10)
    yield "DestroyKeyVersion", {"action": "keys.destroy"}

    plugins = mesh.stub("plugins")
    register_echo(mesh, "2.0.0")
    yield "RegisterPlugin", {"action": "plugins.register"}
    plugins.Execute(plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json='{"a": 1}'), timeout=30)
    yield "Execute", {"action": "plugins.execute"}
    plugins.UnregisterPlugin(plugins_pb2.UnregisterPluginRequest(name="echo", version="2.0.0"), timeout=10)
    yield "UnregisterPlugin", {"action": "plugins.unregister"}

    policy = mesh.stub("policy")
    decision = policy.Decide(decide_request("dr.edge"), timeout=10)
    yield "Decide", {"action": "decide", "decision_id": decision.decision_id}
    policy.ReportSignal(policy_pb2.ReportSignalRequest(subject_id="dr.edge", kind="anomaly"), timeout=10)
    yield "ReportSignal", {"action": "policy.signal", "subject": "dr.edge", "outcome": "OK"}
    rego = next(policy_dir.glob("*.rego"))
    rego.write_text(rego.read_text() + "\n# edited by the edge test\n")
    assert policy.ReloadPolicy(policy_pb2.ReloadPolicyRequest(), timeout=30).changed
    yield "ReloadPolicy", {"action": "policy.bundle.load", "outcome": "OK"}


def test_every_state_changing_rpc_is_audited_with_its_caller(mesh, policy_dir) -> None:
    missing = []
    for rpc, query in _state_changes(mesh, policy_dir):
        callers = {r.event.caller_spiffe_id for r in mesh.wait_for_records(**query)}
        if CLIENT not in callers:
            missing.append(f"{rpc}: {sorted(callers)}")
    assert not missing, missing

    # The audit service's own state change: an appended event records the emitter from its certificate.
    event = audit_event(event_id="0190f0e0-0000-7000-8000-0000000000aa", action="keys.edge")
    mesh.stub("audit", "keys").Append(audit_pb2.AppendRequest(events=[event]), timeout=10)
    assert [r.emitter_spiffe_id for r in mesh.records(action="keys.edge")] == [
        "spiffe://ztmesh.local/ns/ztmesh/sa/keys"
    ]


@pytest.fixture(scope="module")
def without_audit(pki: Pki, tmp_path_factory) -> Iterator[ServiceMesh]:
    """Keys, plugins and policy whose audit service is down and whose spools hold nothing more."""
    data_dir = tmp_path_factory.mktemp("outage")
    outage = ServiceMesh(pki)
    env = {"ZTMESH_AUDIT_SPOOL_MAX_BYTES": "1", "ZTMESH_AUDIT_APPEND_TIMEOUT": "0.2"}
    dead = f"localhost:{free_port()}"
    with running(*build("keys", pki, data_dir, env=env, audit_addr=dead)) as keys:
        outage.servers["keys"] = keys
        app, settings = build("plugins", pki, data_dir, env=env, audit_addr=dead, keys_addr=f"localhost:{keys.port}")
        with (
            running(app, settings) as plugins,
            running(*build("policy", pki, data_dir, env=env, audit_addr=dead)) as policy,
        ):
            outage.servers.update(plugins=plugins, policy=policy)
            yield outage


OUTAGE: list[tuple[str, Call]] = [
    (
        "CreateKey",
        lambda m: m.stub("keys").CreateKey(keys_pb2.CreateKeyRequest(key_id="k-outage", purpose=1), timeout=10),
    ),
    ("RegisterPlugin", lambda m: register_echo(m)),
    (
        "Execute",
        lambda m: m.stub("plugins").Execute(
            plugins_pb2.ExecuteRequest(name="echo", function="echo", input_json="{}"), timeout=30
        ),
    ),
    (
        "UnregisterPlugin",
        lambda m: m.stub("plugins").UnregisterPlugin(plugins_pb2.UnregisterPluginRequest(name="echo"), timeout=10),
    ),
]


@pytest.mark.parametrize("call", [row[1] for row in OUTAGE], ids=[row[0] for row in OUTAGE])
def test_an_audit_outage_is_unavailable_not_unknown(without_audit, call) -> None:
    code, details = status_of(lambda: call(without_audit))
    assert code == grpc.StatusCode.UNAVAILABLE and "audit" in details, (code, details)


def test_decide_during_an_audit_outage_is_a_deny_with_the_audit_fault(without_audit) -> None:
    reply = without_audit.stub("policy").Decide(decide_request("dr.outage"), timeout=10)
    assert (reply.decision, reply.fault) == (policy_pb2.DECISION_DENY, policy_pb2.FAULT_AUDIT_ERROR)
