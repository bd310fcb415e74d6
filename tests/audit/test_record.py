"""The record schema: canonical encoding pinned byte for byte, JCS numbers, and bad events refused."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ztmesh.audit import canonical
from ztmesh.audit.errors import InvalidEvent
from ztmesh.audit.record import GENESIS_HASH, AuditRecord, make_event

# The example of docs/audit-record.md: if this changes, every stored chain stops verifying.
EXAMPLE = (
    b'{"action":"decide","caller":"spiffe://ztmesh.local/ns/ztmesh/sa/envoy","decision_id":"d-1",'
    b'"details":{"client_ip":"203.0.113.0","headers":{},"score":81.5,"z\xc3\xa9":"caf\xc3\xa9 \\"quoted\\""},'
    b'"emitter":"spiffe://ztmesh.local/ns/ztmesh/sa/policy","event_id":"01890a5d-ac96-774b-bcce-b302099a8057",'
    b'"masked":["/client_ip","/headers/Cookie"],"outcome":"ALLOW","recorded_at":"2025-01-02T03:04:05.000100Z",'
    b'"resource":"patient/42","sequence":1,"service":"policy","subject":"dr.ana","time":"2025-01-02T03:04:05.000000Z",'
    b'"trace_id":"","v":1}'
)


def example_record() -> AuditRecord:
    event = make_event(
        event_id="01890A5D-AC96-774B-BCCE-B302099A8057", time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        service="policy", action="decide", outcome="ALLOW", caller="spiffe://ztmesh.local/ns/ztmesh/sa/envoy",
        subject="dr.ana", resource="patient/42", decision_id="d-1",
        details={"score": 81.5, "client_ip": "203.0.113.9", "headers": {"Cookie": "s=1"}, "zé": 'café "quoted"'},
    )  # fmt: skip
    return AuditRecord(event, 1, "2025-01-02T03:04:05.000100Z", "spiffe://ztmesh.local/ns/ztmesh/sa/policy",
                       GENESIS_HASH)  # fmt: skip


def test_canonical_encoding_is_pinned() -> None:
    record = example_record()
    assert record.canonical() == EXAMPLE
    assert record.computed_hash() == hashlib.sha256(GENESIS_HASH + EXAMPLE).digest()
    # It is plain JSON too: sorted keys, no whitespace, so any JCS implementation reproduces it.
    resorted = json.dumps(json.loads(EXAMPLE), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert resorted.encode() == EXAMPLE


@pytest.mark.parametrize(
    ("value", "jcs"),
    [
        (0.0, "0"), (-0.0, "0"), (1.0, "1"), (0.1, "0.1"), (123.456, "123.456"), (1e-4, "0.0001"),
        (1e-5, "0.00001"), (1e-6, "0.000001"), (1e-7, "1e-7"), (1.5e-7, "1.5e-7"), (1e16, "10000000000000000"),
        (1e21, "1e+21"), (1.7976931348623157e308, "1.7976931348623157e+308"), (5e-324, "5e-324"),
        (-2.5e-8, "-2.5e-8"), (333333333.33333329, "333333333.3333333"),
    ],
)  # fmt: skip
def test_numbers_follow_ecmascript(value: float, jcs: str) -> None:
    assert canonical.ecmascript_number(value) == jcs
    assert canonical.dumps({"n": value}) == '{"n":' + jcs + "}"


def test_fast_and_exact_encoders_agree_on_sanitized_details() -> None:
    details = {"b": [1, 2.5, None, True, 'x\n"y\\'], "a": {"é": 0.125, "\u2028": "ctl\x01"}, "k": -7}
    event = make_event(event_id="01890a5d-ac96-774b-bcce-b302099a8057", time=datetime.now(UTC), service="keys",
                       action="keys.encrypt", outcome="OK", details=details)  # fmt: skip
    assert event.details == canonical.dumps(json.loads(event.details))


def test_keys_beyond_the_bmp_sort_by_utf16() -> None:
    event = make_event(event_id="01890a5d-ac96-774b-bcce-b302099a8057", time=datetime.now(UTC), service="keys",
                       action="x", outcome="OK", details={"\U0001f600": 1, "\ufb01": 2})  # fmt: skip
    assert event.details == '{"\U0001f600":1,"\ufb01":2}'  # U+D83D sorts before U+FB01


GOOD = {"event_id": "01890a5d-ac96-774b-bcce-b302099a8057", "time": datetime(2025, 1, 2, tzinfo=UTC),
        "service": "policy", "action": "decide", "outcome": "ALLOW"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"event_id": ""}, "event_id", "required"),
        ({"event_id": "not-a-uuid"}, "event_id", "not a UUID"),
        ({"time": None}, "time", "required"),
        ({"time": datetime(2025, 1, 2)}, "time", "no time zone"),
        ({"time": "yesterday"}, "time", "ISO 8601"),
        ({"time": datetime(1969, 12, 31, tzinfo=UTC)}, "time", "outside"),
        ({"service": ""}, "service", "required"),
        ({"service": "Policy Service"}, "service", "service name"),
        ({"action": ""}, "action", "required"),
        ({"action": "rm -rf"}, "action", "action name"),
        ({"outcome": ""}, "outcome", "required"),
        ({"outcome": "allow"}, "outcome", "outcome"),
        ({"subject": "ana\udcff"}, "subject", "UTF-8"),
        ({"subject": "a\nb"}, "subject", "control character"),
        ({"subject": "x" * 1025}, "subject", "at most 1024"),
        ({"caller": "https://evil"}, "caller_spiffe_id", "spiffe://"),
        ({"details": "[1, 2]"}, "details", "JSON object"),
        ({"details": "{not json"}, "details", "not JSON"),
        ({"details": '{"a": 1, "a": 2}'}, "details", "appears twice"),
        ({"details": '{"a": NaN}'}, "details", "NaN"),
        ({"details": b'{"a": "\xff"}'}, "details", "not valid UTF-8"),
        ({"details": {"big": 2**60}}, "details/big", "2^53"),
        ({"details": {"f": float("inf")}}, "details/f", "Infinity"),
        ({"details": {"when": datetime.now(UTC)}}, "details/when", "not a JSON value"),
        ({"details": {"s": "bad\udc80"}}, "details/s", "UTF-8"),
        ({"details": {"s": "nul\x00"}}, "details/s", "NUL"),
        ({"details": {"x": "y" * 70_000}}, "details", "at most 65536"),
        ({"masked": ["headers"]}, "masked", "JSON Pointer"),
    ],
)  # fmt: skip
def test_bad_events_are_refused_naming_the_field(change: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        make_event(**{**GOOD, **change})
    assert caught.value.field == field
    assert words in str(caught.value)


def test_deeply_nested_details_are_refused() -> None:
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(InvalidEvent, match="nested deeper"):
        make_event(**GOOD, details=deep)


def test_times_are_normalized_to_utc_microseconds() -> None:
    plus3 = datetime(2025, 6, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=3)))
    assert make_event(**{**GOOD, "time": plus3}).time == "2025-06-01T09:00:00.000005Z"
    assert make_event(**{**GOOD, "time": "2025-06-01T09:00:00Z"}).time == "2025-06-01T09:00:00.000000Z"


def test_processes_creating_the_local_key_together_agree(tmp_path) -> None:
    import threading

    from ztmesh.audit.signing import LocalMlDsaSigner

    path = tmp_path / "audit" / "checkpoint-signing.key"
    made: list = []
    threads = [threading.Thread(target=lambda: made.append(LocalMlDsaSigner.load_or_create(path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({s.public_pem() for s in made}) == 1 and len(made) == 4
    assert oct(path.stat().st_mode & 0o777) == "0o600" and not list(path.parent.glob(".*tmp"))
