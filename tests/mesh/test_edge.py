"""The shared gRPC edge over real mTLS: domain errors map to their status most specific first, the mesh's
errors after the service's, undecodable bytes are INVALID_ARGUMENT, and a bug is INTERNAL logged once;
and the edge's conversions (Timestamp, Struct) give what protobuf's own would."""

from __future__ import annotations

import json
import logging
import math
import random
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from tests.support.mesh import running, settings_for
from ztmesh._proto.echo.v1 import echo_pb2, echo_pb2_grpc
from ztmesh.mesh.echo import ECHO_SERVICE
from ztmesh.mesh.edge import Edge, caller_id, struct_to_dict, timestamp_to_datetime
from ztmesh.mesh.errors import AuditUnavailable, InvalidField
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.spiffe import authorize_member_of


class LookupFailed(Exception):
    pass


class KeyMissing(LookupFailed):
    pass


class SpoolFull(AuditUnavailable):
    pass


EDGE = Edge((KeyMissing, grpc.StatusCode.NOT_FOUND), (LookupFailed, grpc.StatusCode.FAILED_PRECONDITION))
RAISES = {
    "missing": KeyMissing("key 'k' does not exist"),
    "lookup": LookupFailed("the store said no"),
    "audit": SpoolFull("spool full"),
    "field": InvalidField("time", "not a valid time"),
    "bug": ZeroDivisionError("division by zero"),
}


class RaisingEcho(echo_pb2_grpc.EchoServiceServicer):
    @EDGE.rpc
    def Echo(self, request: echo_pb2.EchoRequest, context: grpc.ServicerContext) -> echo_pb2.EchoResponse:
        if request.message in RAISES:
            raise RAISES[request.message]
        return echo_pb2.EchoResponse(message=request.message, caller_spiffe_id=caller_id())


@pytest.fixture
def stub(pki, tmp_path):
    app = ServiceApp(
        name="edge",
        register=lambda server: echo_pb2_grpc.add_EchoServiceServicer_to_server(RaisingEcho(), server),
        service_names=(ECHO_SERVICE,),
        rules={f"/{ECHO_SERVICE}/Echo": authorize_member_of("ztmesh.local")},
    )
    with running(app, settings_for(pki, tmp_path), identity="keys") as server:
        yield echo_pb2_grpc.EchoServiceStub(pki.channel("client", server.port)), pki.channel("client", server.port)


@pytest.mark.parametrize(
    ("message", "code", "details"),
    [
        ("missing", grpc.StatusCode.NOT_FOUND, "key 'k' does not exist"),
        ("lookup", grpc.StatusCode.FAILED_PRECONDITION, "the store said no"),
        ("audit", grpc.StatusCode.UNAVAILABLE, "audit trail unavailable, the operation is refused: spool full"),
        ("field", grpc.StatusCode.INVALID_ARGUMENT, "time: not a valid time"),
    ],
)
def test_errors_map_most_specific_first(stub, message, code, details) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub[0].Echo(echo_pb2.EchoRequest(message=message), timeout=5)
    assert (err.value.code(), err.value.details()) == (code, details)


def test_a_bug_is_internal_logged_once_with_its_traceback(stub, caplog) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.RpcError) as err:
        stub[0].Echo(echo_pb2.EchoRequest(message="bug"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details().startswith("internal error (request id ") and "division" not in err.value.details()
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and logged[0].exc_info[0] is ZeroDivisionError
    assert not [r for r in caplog.records if "Exception calling application" in r.getMessage()]
    assert stub[0].Echo(echo_pb2.EchoRequest(message="hi"), timeout=5).caller_spiffe_id.endswith("/sa/client")


def test_undecodable_bytes_are_invalid_argument_naming_the_message(stub) -> None:
    echo_raw = stub[1].unary_unary(f"/{ECHO_SERVICE}/Echo")
    with pytest.raises(grpc.RpcError) as err:
        echo_raw(b"\x0a\x05ab", timeout=5)  # a string field of 5 bytes, 2 sent
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request is not a valid ztmesh.echo.v1.EchoRequest")


def test_a_rule_shadowed_by_an_earlier_one_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="KeyMissing can never match: LookupFailed is listed before it"):
        Edge((LookupFailed, grpc.StatusCode.NOT_FOUND), (KeyMissing, grpc.StatusCode.NOT_FOUND))
    with pytest.raises(TypeError, match="can never match: Exception is listed before it"):
        Edge((Exception, grpc.StatusCode.INTERNAL))  # a catch-all would shadow the mesh's rules (and hide bugs)


def test_timestamps_no_datetime_holds_name_their_field() -> None:
    assert timestamp_to_datetime(timestamp_pb2.Timestamp(seconds=86400), "time") == datetime(1970, 1, 2, tzinfo=UTC)
    for stamp in (timestamp_pb2.Timestamp(seconds=2**62), timestamp_pb2.Timestamp(seconds=0, nanos=-1)):
        with pytest.raises(InvalidField, match=r"^context\.time: not a valid time \("):
            timestamp_to_datetime(stamp, "context.time")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "dr.ana", "ação", "ключ", "😀", "a\nb", "\u0000", " "]) + str(rng.randrange(99))
    if kind == "int":
        return rng.choice([0, -1, 1, 2**53, -(2**31), rng.randrange(-10**9, 10**9)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e-300, 1e300, 91.3, rng.uniform(-1e6, 1e6)])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}{rng.choice(['', '.x', '/y', ' z'])}": _random_json(rng, depth + 1) for i in range(rng.randrange(5))}


def test_struct_to_dict_is_what_message_to_dict_gives() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        struct = struct_pb2.Struct()
        struct.update({f"f{i}": _random_json(rng) for i in range(rng.randrange(6))})
        ours, theirs = struct_to_dict(struct), json_format.MessageToDict(struct)
        assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)  # types too: 2.0 is not 2
    unset = struct_pb2.Struct()
    unset.fields["nothing"].SetInParent()  # a Value with no kind: None for both
    assert struct_to_dict(unset) == json_format.MessageToDict(unset) == {"nothing": None}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_struct_to_dict_refuses_what_json_cannot_hold(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.update({"outer": {"list": [1, number]}})
    with pytest.raises(ValueError):
        json_format.MessageToDict(struct)
    with pytest.raises(ValueError):
        struct_to_dict(struct)
