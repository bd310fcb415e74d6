"""The Append path's native event check (native/audit/src/event.rs) against `record.make_event`, which it
stands in for: whenever it is sure of an event, make_event accepts that event and makes exactly the same
EventV1 of it; whatever it is not sure of goes to make_event. Random and hostile events (ids, times at
every edge, names, control characters, lengths, and details documents with secrets, addresses, odd
numbers, key orders and escapes), and the sanitizer's own test cases."""

from __future__ import annotations

import json
import random
import struct
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import orjson
import pytest

from ztmesh.audit import canonical, sanitize
from ztmesh.audit.errors import InvalidEvent
from ztmesh.audit.record import DEFAULT_LIMITS, EventV1, Limits, checked_event, make_event

LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z
# What a decision event carries, sanitized by its emitter: the check must be sure of it.
DECISION_DETAILS = canonical.dumps({
    "score": 78.5, "classification": "patient_data", "client_ip": "10.1.2.0", "revision": "r42",
    "factors": {"identity": 0.9, "device": 0.8, "network": 0.7}, "obligations": ["log_all_access"],
    "caller": "spiffe://ztmesh.local/ns/ztmesh/sa/envoy", "attempts": 3, "allowed": True, "note": None,
})  # fmt: skip
BASE = {
    "event_id": "0192f0c4-7a8e-7c3b-9d2e-5f6a7b8c9d0e", "seconds": 1_764_590_400, "nanos": 123_456_789,
    "service": "policy", "action": "decide", "outcome": "ALLOW", "caller": "spiffe://ztmesh.local/ns/ztmesh/sa/envoy",
    "subject": "user-7", "resource": "patient/42", "details": DECISION_DETAILS, "masked": ["/client_ip"],
    "decision_id": "0192f0c4-7a8e-7c3b-9d2e-5f6a7b8c9d0f", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}  # fmt: skip


def reference(fields: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> EventV1 | InvalidEvent:
    """What make_event makes of the fields, as the servicer's slow path calls it."""
    try:
        since_epoch = timedelta(seconds=fields["seconds"], microseconds=fields["nanos"] // 1000)
        stamp = datetime(1970, 1, 1, tzinfo=UTC) + since_epoch
    except OverflowError:
        return InvalidEvent("time", "out of range")
    try:
        return make_event(
            event_id=fields["event_id"], time=stamp, service=fields["service"], action=fields["action"],
            outcome=fields["outcome"], caller=fields["caller"], subject=fields["subject"],
            resource=fields["resource"], details=fields["details"], masked=fields["masked"],
            decision_id=fields["decision_id"], trace_id=fields["trace_id"], limits=limits,
        )  # fmt: skip
    except InvalidEvent as exc:
        return exc


def checked(fields: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> EventV1 | None:
    return checked_event(**fields, limits=limits)


def assert_agrees(fields: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> bool:
    """The check is None or make_event's very event; True when it was sure."""
    sure = checked(fields, limits)
    if sure is None:
        return False
    expected = reference(fields, limits)
    assert not isinstance(expected, InvalidEvent), (fields, expected)
    assert sure == expected, fields
    return True


def test_an_emitters_decision_event_is_sure_and_the_same(native: ModuleType) -> None:
    assert assert_agrees(BASE)
    sure = checked(BASE)
    assert sure is not None and sure.time == "2025-12-01T12:00:00.123456Z"


@pytest.mark.parametrize(
    "change",
    [
        {"event_id": "0192F0C4-7A8E-7C3B-9D2E-5F6A7B8C9D0E"},  # upper case: sure, lowered
        {"seconds": 0, "nanos": 0}, {"seconds": LAST_SECOND - 1, "nanos": 999_999_999}, {"nanos": 999},
        {"caller": "", "subject": "", "resource": "", "decision_id": "", "trace_id": ""},
        {"details": "{}"}, {"subject": "ü" * 1024}, {"action": "keys.encrypt/v1:rotate-x_y"},
        {"masked": []}, {"masked": ["/b", "/a", "/a", "", "/ü", "/z"]}, {"masked": ["/" + "x" * 1023] * 1000},
    ],
)  # fmt: skip
def test_edges_it_is_sure_of_agree(native: ModuleType, change: dict) -> None:
    assert assert_agrees({**BASE, **change}), change


@pytest.mark.parametrize(
    "change",
    [
        # refused by make_event
        {"event_id": "not-a-uuid"}, {"event_id": ""}, {"seconds": -1}, {"seconds": LAST_SECOND, "nanos": 1000},
        {"nanos": 1_000_000_000}, {"nanos": -1}, {"service": "Policy"}, {"service": ""}, {"service": "a" * 64},
        {"action": "dé"}, {"action": "a b"}, {"outcome": "allow"}, {"outcome": "A" * 33}, {"caller": "alice"},
        {"subject": "a\nb"}, {"resource": "x\x7f"}, {"subject": "ü" * 1025}, {"decision_id": "d" * 129},
        {"trace_id": "\x00"}, {"details": "[]"}, {"details": '{"a":1,"a":2}'}, {"details": "{"},
        {"details": '{"n":NaN}'}, {"details": '{"n":12345678901234567890}'}, {"subject": "\ud800"},
        {"details": "{" + ",".join(f'"k{i:02}":[]' for i in range(40)) + "}"},
        # accepted by make_event, but changed by it or not in the one spelling the check reads
        {"event_id": " 0192f0c4-7a8e-7c3b-9d2e-5f6a7b8c9d0e "}, {"action": "décide"},
        {"details": '{"token":"x"}'}, {"details": '{"apiKey":"x"}'}, {"details": '{"h":"Bearer abc"}'},
        {"details": '{"ip":"10.1.2.3"}'}, {"details": '{"ip":"2001:db8::1"}'}, {"details": '{"ip":"10.1.2.00"}'},
        {"details": '{"at":"12:30:45"}'}, {"details": '{"t":"eyJhbGciOi.eyJzdWIiOi.sig"}'},
        {"details": '{"b":1,"a":2}'}, {"details": '{"a": 1}'}, {"details": '{"a":"\\u00fc"}'}, {"details": '{"a":"ü"}'},
        {"details": '{"n":1.0}'}, {"details": '{"n":-0}'}, {"details": '{"n":1e5}'}, {"details": '{"n":0.00001}'},
        {"details": '{"n":1234567890123456}'}, {"details": '{"n":0.1000}'}, {"details": '{"n":01}'},
        {"details": '{"a":"x\x7f"}'}, {"details": '{"key_id":"k1"}'}, {"details": ""},
        {"masked": ["a"]}, {"masked": ["/a\n"]}, {"masked": ["/a"] * 1001}, {"masked": ["/" + "x" * 1024]},
        {"masked": [7]}, {"masked": ["/\ud800"]},
    ],
)  # fmt: skip
def test_what_it_is_not_sure_of_goes_to_make_event(native: ModuleType, change: dict) -> None:
    fields = {**BASE, **change}
    assert checked(fields) is None, change


def test_secret_words_split_by_a_separator_are_doubts(native: ModuleType) -> None:
    """is_secret_key joins a key's words: "to-ken" is a token, and make_event erases it."""
    keys = [word[:cut] + sep + word[cut:] for word in sanitize.SECRET_WORDS for cut in (1, len(word) // 2)
            for sep in "-_."]  # fmt: skip
    secret = [key for key in keys if sanitize.is_secret_key(key)]
    assert len(secret) > 50
    for key in secret:
        fields = {**BASE, "details": canonical.dumps({key: "x", "n": 1})}
        assert checked(fields) is None, key
        made = reference(fields)
        assert isinstance(made, EventV1) and made.details == '{"n":1}'


def test_limits_are_the_ones_configured(native: ModuleType) -> None:
    tight = Limits(max_details_bytes=len(DECISION_DETAILS) - 1, max_text_chars=5, max_id_chars=40)
    assert checked(BASE, tight) is None  # details one byte over
    assert isinstance(reference(BASE, tight), InvalidEvent)
    roomy = Limits(max_details_bytes=len(DECISION_DETAILS), max_text_chars=200, max_id_chars=40)
    assert assert_agrees(BASE, roomy)


def test_times_across_the_whole_range_are_spelled_as_make_event_spells_them(native: ModuleType) -> None:
    rng = random.Random(7)
    for _ in range(3000):
        fields = {**BASE, "seconds": rng.randrange(0, LAST_SECOND), "nanos": rng.randrange(0, 1_000_000_000)}
        assert assert_agrees(fields)


def _number(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return struct.unpack("<d", rng.randbytes(8))[0]  # any double: NaN, infinities, subnormals, huge
    if kind == 1:
        return round(rng.uniform(-1e6, 1e6), rng.randrange(0, 12))
    if kind == 2:
        return rng.choice([0.0, -0.0, 1e-4, 1e-5, 0.1 + 0.2, 2.0**53, 1e15 + 0.5, 123456789012345.6, 5e-324])
    if kind == 3:
        return rng.randrange(-(2**60), 2**60) >> rng.randrange(0, 60)
    if kind == 4:
        return rng.uniform(-1, 1) * 10.0 ** rng.randrange(-6, 17)
    return rng.choice([True, False, None])


KEYS = ["a", "b", "score", "client_ip", "token", "key_id", "password", "note", "pin", "shipping", "A", "_", "",
        "authorization", "session_id", "ünï", "x y", "apiKey", "to-ken", "se_cret", "pass.word", "c-v-v"]  # fmt: skip
STRINGS = ["", "ok", "10.1.2.0", "10.1.2.3", "1.2.3.4.5", "v120.0.6099.129", "2001:db8::1", "::1", "fe80::1%eth0",
           "12:30", "12:30:45", "spiffe://ztmesh.local/ns/x/sa/y", "https://example.org:8443/a", "Bearer abc",
           "basic", "eyJhbGciOiJI.eyJzdWIiOiIx.c2ln", "-----BEGIN PRIVATE KEY-----", "a\\b", 'q"uote', "tab\t",
           "ü", "😀", "\x7f", "\u2028", "192.168.000.1", "1.2.3.0", "0.0.0.0"]  # fmt: skip


def _value(rng: random.Random, depth: int) -> Any:
    pick = rng.randrange(10)
    if depth < 4 and pick == 0:
        return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    if depth < 4 and pick == 1:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if pick < 5:
        return rng.choice(STRINGS) if rng.random() < 0.8 else rng.choice(STRINGS) + rng.choice(STRINGS)
    return _number(rng)


def _details_text(rng: random.Random) -> str:
    document = {rng.choice(KEYS): _value(rng, 0) for _ in range(rng.randrange(0, 6))}
    spelling = rng.randrange(5)
    try:
        if spelling == 0:
            return json.dumps(document)  # spaces, unsorted
        if spelling == 1:
            return json.dumps(document, sort_keys=True, separators=(",", ":"))  # Python's float spelling
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()  # an emitter's spelling
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=True)


def test_random_details_documents_agree(native: ModuleType) -> None:
    rng = random.Random(20261201)
    sure = 0
    for _ in range(6000):
        text = _details_text(rng)
        fields = {**BASE, "details": text}
        if assert_agrees(fields):
            sure += 1
            assert sanitize.unchanged(text), text
    assert sure > 1000  # the check is not simply always in doubt


def test_random_numbers_agree_with_the_sanitizer(native: ModuleType) -> None:
    """Every number it lets through is one `sanitize.unchanged` would keep: the same double, spelled as
    orjson and canonical JSON spell it."""
    rng = random.Random(5)
    sure = 0
    for _ in range(20000):
        number = _number(rng)
        for text in (f'{{"n":{orjson.dumps(number).decode()}}}', f'{{"n":{number!r}}}'):
            if native.details_sure(text, 65536):
                sure += 1
                assert sanitize.unchanged(text), text
                assert make_event(**{**_plain_event(), "details": text}).details == text
    assert sure > 5000


def _plain_event() -> dict[str, Any]:
    return {"event_id": BASE["event_id"], "time": datetime.now(UTC), "service": "policy", "action": "decide",
            "outcome": "ALLOW"}  # fmt: skip


def test_random_text_fields_agree(native: ModuleType) -> None:
    rng = random.Random(11)
    alphabet = ["a", "Z", "0", "-", "_", ".", "/", ":", " ", "\t", "\n", "\x00", "\x1f", "\x7f", "ü", "€", "😀", "é"]
    sure = 0
    for _ in range(6000):
        name = rng.choice(["event_id", "service", "action", "outcome", "caller", "subject", "resource", "decision_id",
                           "trace_id", "masked"])  # fmt: skip
        length = rng.choice([0, 1, 5, 36, 63, 64, 127, 128, 129, 1024, 1025])
        value: Any = "".join(rng.choice(alphabet) for _ in range(length))
        if name == "masked":
            value = [rng.choice(["", "/", "/a"]) + value[: rng.randrange(0, 1030)] for _ in range(rng.randrange(0, 4))]
        if name == "caller" and rng.random() < 0.5:
            value = "spiffe://" + value
        if name == "event_id" and rng.random() < 0.5:
            value = "".join(rng.choice("0123456789abcdefABCDEF-g ") for _ in range(36))
        sure += assert_agrees({**BASE, name: value})
    assert sure > 500
