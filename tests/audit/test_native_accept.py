"""Append's one native pass over a request's events (native/audit/src/accept.rs, `record.accept_events`)
against the Python it stands in for: each event it accepts is the EventV1 `servicer.event_from_proto`
makes of the parsed message, with `record_parts` and the COPY columns of that event; each it is not
sure of is left to event_from_proto. Random and hostile events (the event check's own generators), and
hostile wire bytes: unknown fields, a singular field sent twice, wrong wire types, no time, another
service's events."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest

from tests.audit import test_native_event as check_cases
from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh.audit.errors import AuditError, CallerMismatch
from ztmesh.audit.record import DEFAULT_LIMITS, EncodedEvents, EventV1, accept_events, record_parts
from ztmesh.audit.servicer import event_from_proto, events_from_request
from ztmesh.audit.store_postgres import _copy_columns, _Encoded
from ztmesh.mesh.spiffe import SpiffeId

EMITTER = "spiffe://ztmesh.local/ns/ztmesh/sa/policy"


def message(fields: dict[str, Any]) -> audit_pb2.AuditEvent:
    """An AuditEvent of the event check's field dicts (test_native_event.BASE and its changes)."""
    sent = audit_pb2.AuditEvent(
        event_id=fields["event_id"], service=fields["service"], action=fields["action"], outcome=fields["outcome"],
        caller_spiffe_id=fields["caller"], subject=fields["subject"], resource=fields["resource"],
        details_json=fields["details"], masked_paths=fields["masked"], decision_id=fields["decision_id"],
        trace_id=fields["trace_id"],
    )  # fmt: skip
    sent.time.seconds, sent.time.nanos = fields["seconds"], fields["nanos"]
    return sent


def reference(sent: audit_pb2.AuditEvent) -> EventV1 | None:
    try:
        return event_from_proto(sent, DEFAULT_LIMITS, 0)
    except AuditError:
        return None


def assert_agrees(sent: list[audit_pb2.AuditEvent], account: str = "policy") -> int:
    """Each accepted event is event_from_proto's, encoded as the store encodes it; returns how many."""
    accepted = accept_events(audit_pb2.AppendRequest(events=sent).SerializeToString(), account, EMITTER)
    assert accepted is not None
    made, parts, columns = accepted
    assert len(made) == len(sent)
    for one, got in zip(sent, made, strict=True):
        if got is None:
            continue
        expected = reference(one)
        assert expected is not None, one  # it accepted what Python refuses
        assert got == expected and type(got) is EventV1, one
        assert parts[got.event_id] == record_parts(got, EMITTER)
        assert columns[got.event_id] == _copy_columns(got, EMITTER)
    assert set(parts) == set(columns) == {e.event_id for e in made if e is not None}
    return sum(e is not None for e in made)


def test_an_emitters_batch_is_accepted_whole_and_the_same(native: ModuleType) -> None:
    sent = [message({**check_cases.BASE, "event_id": f"0192f0c4-7a8e-7c3b-9d2e-5f6a7b8c{i:04x}"}) for i in range(50)]
    assert assert_agrees(sent) == 50


def test_the_check_cases_agree_one_by_one(native: ModuleType) -> None:
    """Every edge and doubt of the event check's tests, read off the wire instead of passed as arguments."""
    edges = check_cases.test_edges_it_is_sure_of_agree.pytestmark[0].args[1]  # type: ignore[attr-defined]
    doubts = check_cases.test_what_it_is_not_sure_of_goes_to_make_event.pytestmark[0].args[1]  # type: ignore[attr-defined]
    for change in edges:
        assert assert_agrees([message({**check_cases.BASE, **change})]) == 1, change
    for change in doubts:
        try:
            sent = message({**check_cases.BASE, **change})
        except (TypeError, ValueError):  # not even a protobuf message (a lone surrogate, a number in a list)
            continue
        unset = change == {"details": ""}  # on the wire, empty details are unset: "{}", which it is sure of
        assert assert_agrees([sent]) == (1 if unset else 0), change


def test_random_events_agree(native: ModuleType) -> None:
    rng = random.Random(20261202)
    alphabet = ["a", "Z", "0", "-", "/", ":", " ", "\t", "\x00", "\x7f", "ü", "😀"]
    batch, accepted = [], 0
    for n in range(3000):
        fields = {**check_cases.BASE, "event_id": f"0192f0c4-7a8e-7c3b-9d2e-{n:012x}"}
        pick = rng.randrange(4)
        if pick == 0:
            fields["details"] = check_cases._details_text(rng)
        elif pick == 1:
            name = rng.choice(["subject", "resource", "caller", "decision_id", "trace_id", "action", "outcome"])
            fields[name] = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 3, 129, 1025])))
        elif pick == 2:
            fields["seconds"], fields["nanos"] = rng.randrange(-5, 2**40), rng.randrange(-5, 10**9 + 5)
        else:
            fields["masked"] = [rng.choice(["", "/", "/a", "b", "/ü"]) for _ in range(rng.randrange(0, 4))]
        batch.append(message(fields))
        if len(batch) == 100:
            accepted += assert_agrees(batch)
            batch = []
    assert 500 < accepted < 3000  # it is sure of many, not of all


def _wire(field: int, wire_type: int, payload: bytes) -> bytes:
    key = bytes([field << 3 | wire_type]) if field < 16 else bytes([(field << 3 | wire_type) & 0x7F | 0x80, field >> 4])
    if wire_type == 2:
        return key + bytes([len(payload)]) + payload
    return key + payload


@pytest.mark.parametrize(
    "extra",
    [
        _wire(14, 2, b"x"),  # a field it does not know (a newer emitter's)
        _wire(3, 2, b"policy"),  # service sent twice (protobuf keeps the last)
        _wire(2, 2, b"\x08\x01"),  # time sent twice (protobuf merges them)
        _wire(12, 0, b"\x02"),  # schema version 2
        _wire(6, 0, b"\x01"),  # action as a number
        _wire(2, 2, _wire(3, 0, b"\x01")),  # a Timestamp field it does not know
    ],
)
def test_wire_bytes_it_does_not_expect_are_doubts(native: ModuleType, extra: bytes) -> None:
    event = message(check_cases.BASE).SerializeToString() + extra
    request = _wire(1, 2, b"")[:1] + _varint(len(event)) + event
    accepted = accept_events(request, "policy", EMITTER)
    assert accepted is not None and accepted[0] == [None]


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def test_a_request_it_cannot_read_is_left_whole_to_python(native: ModuleType) -> None:
    event = message(check_cases.BASE).SerializeToString()
    framed = b"\x0a" + _varint(len(event)) + event
    assert accept_events(framed + _wire(2, 2, b"x"), "policy", EMITTER) is None  # an unknown request field
    assert accept_events(framed[:-1], "policy", EMITTER) is None  # cut short
    assert accept_events(b"", "policy", EMITTER) == ([], {}, {})


def test_no_time_and_another_services_events_are_doubts(native: ModuleType) -> None:
    untimed = message(check_cases.BASE)
    untimed.ClearField("time")
    assert assert_agrees([untimed]) == 0
    assert assert_agrees([message(check_cases.BASE)], account="keys") == 0


def test_the_servicer_mixes_both_paths_and_the_store_encodes_the_rest(native: ModuleType) -> None:
    sure = message(check_cases.BASE)
    odd = message({**check_cases.BASE, "event_id": "0192f0c4-7a8e-7c3b-9d2e-5f6a7b8c9d0f", "details": '{"b":1,"a":2}'})
    request = audit_pb2.AppendRequest(events=[sure, odd])
    events = events_from_request(request, SpiffeId.parse(EMITTER), DEFAULT_LIMITS)
    assert isinstance(events, EncodedEvents)
    assert list(events) == [event_from_proto(sure, DEFAULT_LIMITS, 0), event_from_proto(odd, DEFAULT_LIMITS, 1)]
    assert list(events.parts) == [events[0].event_id]  # the odd one was made by make_event (keys sorted)
    plain = _Encoded(list(events), EMITTER)
    for emitter in (EMITTER, "spiffe://ztmesh.local/ns/ztmesh/sa/other"):
        reused, fresh = _Encoded(events, emitter), _Encoded(list(events), emitter)
        assert (reused.parts, reused.columns) == (fresh.parts, fresh.columns)
    assert (_Encoded(events, EMITTER).parts, _Encoded(events, EMITTER).columns) == (plain.parts, plain.columns)
    with pytest.raises(CallerMismatch):  # another service's events are refused as before
        events_from_request(request, SpiffeId.parse("spiffe://ztmesh.local/ns/ztmesh/sa/keys"), DEFAULT_LIMITS)
