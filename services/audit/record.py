"""The audit record schema (version 1), its validation and its canonical encoding.

An `EventV1` is what an emitter reports, validated and sanitized; an `AuditRecord` is an event as the
trail stores it: with its sequence number, the time audit recorded it, the emitter's verified
identity and its place in the hash chain. docs/audit-record.md specifies the encoding byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ztmesh.audit import canonical
from ztmesh.audit.errors import InvalidEvent
from ztmesh.audit.sanitize import canonical_if_unchanged, sanitize, unchanged

try:  # native/audit, built by scripts/install-deps.sh and the image; without it make_event decides every event
    from ztmesh_audit_native import accept_events as native_accept_events
    from ztmesh_audit_native import check_event as native_check_event
except ImportError:  # pragma: no cover - the tests require the module under CI
    native_accept_events = None  # type: ignore[assignment]
    native_check_event = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
GENESIS_HASH = bytes(32)
_SCHEMA = str(SCHEMA_VERSION).encode()

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SERVICE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ACTION = re.compile(r"^[A-Za-z/][\w./:-]{0,127}$")
_OUTCOME = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True)
class Limits:
    """Size limits of one event; an event over them is refused, never cut."""

    max_details_bytes: int = 64 * 1024
    max_text_chars: int = 1024  # subject, resource, caller
    max_id_chars: int = 128  # decision_id, trace_id
    max_masked: int = 1000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class EventV1:
    event_id: str  # lowercase UUID text (UUIDv7 from our emitters): the idempotency key
    time: str  # canonical.TIME_FORMAT, UTC, microseconds
    service: str
    action: str
    outcome: str
    caller: str = ""  # SPIFFE ID of whoever asked the emitting service
    subject: str = ""
    resource: str = ""
    details: str = "{}"  # JCS text of the sanitized details object
    masked: tuple[str, ...] = ()  # JSON Pointers into details that sanitization truncated or erased
    decision_id: str = ""
    trace_id: str = ""

    @property
    def moment(self) -> datetime:
        return canonical.parse_time(self.time)

    def details_object(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.details)
        return parsed

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION, "event_id": self.event_id, "time": self.time, "service": self.service,
            "action": self.action, "outcome": self.outcome, "caller": self.caller, "subject": self.subject,
            "resource": self.resource, "details": self.details, "masked": list(self.masked),
            "decision_id": self.decision_id, "trace_id": self.trace_id,
        }  # fmt: skip

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> EventV1:
        """Rebuild a validated event from `to_json` output (the spool's format)."""
        if body.get("v") != SCHEMA_VERSION:
            raise InvalidEvent("v", f"unknown schema version {body.get('v')!r}", str(body.get("event_id", "")))
        fields = {k: body[k] for k in cls.__slots__ if k in body}  # type: ignore[attr-defined]
        fields["masked"] = tuple(fields.get("masked", ()))
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event: EventV1
    sequence: int
    recorded_at: str  # when audit stored it (canonical.TIME_FORMAT); non-decreasing with sequence
    emitter: str  # SPIFFE ID of the workload that appended it ("" for an in-process emitter)
    prev_hash: bytes
    hash: bytes = field(default=b"")

    def canonical(self) -> bytes:
        return encode_record(self.event, self.sequence, self.recorded_at, self.emitter)

    def computed_hash(self) -> bytes:
        return chain_hash(self.prev_hash, self.canonical())


def chain_hash(prev_hash: bytes, canonical_record: bytes) -> bytes:
    """hash = SHA-256(prev_hash || canonical(record))."""
    return hashlib.sha256(prev_hash + canonical_record).digest()


def quoted(text: str) -> bytes:
    return canonical.quote(text).encode()


def assemble(
    action: bytes, caller: bytes, decision_id: bytes, details: bytes, emitter: bytes, event_id: bytes,
    masked: bytes, outcome: bytes, recorded_at: bytes, resource: bytes, sequence: bytes, service: bytes,
    subject: bytes, time: bytes, trace_id: bytes,
) -> bytes:  # fmt: skip
    """The canonical record from its already-encoded JSON values (strings quoted, details and masked as
    JCS text, numbers as decimal ASCII). Keys are in sorted order, so the result is JCS as well."""
    return b"".join((
        b'{"action":', action, b',"caller":', caller, b',"decision_id":', decision_id, b',"details":', details,
        b',"emitter":', emitter, b',"event_id":', event_id, b',"masked":', masked, b',"outcome":', outcome,
        b',"recorded_at":', recorded_at, b',"resource":', resource, b',"sequence":', sequence,
        b',"service":', service, b',"subject":', subject, b',"time":', time, b',"trace_id":', trace_id,
        b',"v":', _SCHEMA, b"}",
    ))  # fmt: skip


@functools.lru_cache(maxsize=1024)  # events of one kind mask the same few paths
def masked_json(masked: tuple[str, ...]) -> str:
    return canonical.dumps(list(masked), plain=True)


def _assembled(event: EventV1, emitter: str, recorded_at: bytes, sequence: bytes) -> bytes:
    return assemble(
        quoted(event.action), quoted(event.caller), quoted(event.decision_id), event.details.encode(),
        quoted(emitter), quoted(event.event_id), masked_json(event.masked).encode(), quoted(event.outcome),
        recorded_at, quoted(event.resource), sequence, quoted(event.service), quoted(event.subject),
        quoted(event.time), quoted(event.trace_id),
    )  # fmt: skip


def encode_record(event: EventV1, sequence: int, recorded_at: str, emitter: str) -> bytes:
    return _assembled(event, emitter, quoted(recorded_at), str(sequence).encode())


def record_parts(event: EventV1, emitter: str) -> tuple[bytes, bytes, bytes]:
    """The canonical record of `event` around the two values only the append knows (under its lock):
    record = before + recorded_at + middle + sequence + after. Encoded once, before the lock is taken:
    the record with a NUL in their place, split there (no encoded JSON value holds a raw NUL)."""
    before, middle, after = _assembled(event, emitter, b'"\x00"', b"\x00").split(b"\x00")
    return before, middle, after


def join_record(parts: tuple[bytes, bytes, bytes], sequence: int, recorded_at: str) -> bytes:
    before, middle, after = parts
    return b"".join((before, recorded_at.encode(), middle, str(sequence).encode(), after))


# --- validation ---------------------------------------------------------------------------------------------


def _text(name: str, value: Any, event_id: str, *, limit: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(name, f"must be a string, got {type(value).__name__}", event_id)
    if required and not value:
        raise InvalidEvent(name, "is required", event_id)
    if len(value) > limit:
        raise InvalidEvent(name, f"is {len(value)} characters long; at most {limit} are accepted", event_id)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(name, "is not valid UTF-8 (lone surrogate)", event_id) from None
    if _CONTROL.search(value):
        raise InvalidEvent(name, "contains a control character", event_id)
    return value


# (field, value) pairs already found valid: a process emits a few dozen services, actions and outcomes,
# so each is checked once, not on every event.
_VALID_NAMES: set[tuple[str, str]] = set()


def _match(name: str, value: Any, pattern: re.Pattern[str], event_id: str, what: str) -> str:
    if type(value) is str and (name, value) in _VALID_NAMES:
        return value
    text = _text(name, value, event_id, limit=256, required=True)
    if not pattern.match(text):
        raise InvalidEvent(name, f"{text!r} is not {what}", event_id)
    if len(_VALID_NAMES) < 4096:
        _VALID_NAMES.add((name, text))
    return text


def normalize_event_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEvent("event_id", "is required (a UUID, UUIDv7 from ztmesh emitters)")
    text = value.strip().lower()
    if not _UUID.match(text):
        raise InvalidEvent("event_id", f"{value[:64]!r} is not a UUID in 8-4-4-4-12 hex form")
    return text


def normalize_time(value: Any, event_id: str) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent("time", f"{value[:64]!r} is not an ISO 8601 timestamp", event_id) from None
    if not isinstance(value, datetime):
        raise InvalidEvent("time", "is required (a timestamp with a time zone)", event_id)
    if value.tzinfo is None:
        raise InvalidEvent("time", "has no time zone; send UTC", event_id)
    if not _EARLIEST <= value <= _LATEST:
        raise InvalidEvent("time", f"{value.isoformat()} is outside 1970-9999", event_id)
    return canonical.format_time(value)


def parse_details(text: str | bytes, event_id: str, limit: int) -> Any:
    """Parse a details document strictly: UTF-8, one JSON value, no duplicate keys, no NaN."""
    if len(text) > limit * 4:  # refuse before spending time on a huge document
        raise InvalidEvent("details", f"is {len(text)} bytes; at most {limit} are accepted", event_id)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent("details", f"is not valid UTF-8 (byte {exc.start})", event_id) from None

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    raise InvalidEvent("details", f"key {key!r} appears twice in one object", event_id)
                seen.add(key)
        return out

    def constant(name: str) -> Any:
        raise InvalidEvent("details", f"{name} is not JSON", event_id)

    try:
        return json.loads(text or "{}", object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            "details", f"is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", event_id
        ) from None


def make_event(
    *,
    event_id: Any,
    time: Any,
    service: Any,
    action: Any,
    outcome: Any,
    caller: Any = "",
    subject: Any = "",
    resource: Any = "",
    details: Any = None,
    masked: Any = (),
    decision_id: Any = "",
    trace_id: Any = "",
    limits: Limits = DEFAULT_LIMITS,
) -> EventV1:
    """Validate and sanitize one event. `details` is a dict or its JSON text; `masked` lists paths an
    earlier sanitization (the emitter's) already removed. Raises InvalidEvent naming the field."""
    eid = normalize_event_id(event_id)
    when = normalize_time(time, eid)
    fast = None  # what the walk below would make of the details, found without it
    if type(details) is str:
        fast = details if len(details) <= limits.max_details_bytes and unchanged(details) else None
    elif type(details) is dict:
        fast = canonical_if_unchanged(details)
    if fast is not None:
        details_text, found = fast, ()
    else:
        if details is None:
            details = {}
        if isinstance(details, str | bytes):
            details = parse_details(details, eid, limits.max_details_bytes)
        clean = sanitize(details, eid)
        details_text, found = canonical.dumps(clean.details, plain=clean.plain), clean.masked
    size = len(details_text.encode())
    if size > limits.max_details_bytes:
        raise InvalidEvent("details", f"is {size} bytes as canonical JSON; at most {limits.max_details_bytes}", eid)
    if not isinstance(masked, list | tuple) or len(masked) > limits.max_masked:
        raise InvalidEvent("masked", f"must be a list of at most {limits.max_masked} JSON Pointers", eid)
    earlier = [_text("masked", p, eid, limit=limits.max_text_chars) for p in masked]
    if any(p and not p.startswith("/") for p in earlier):
        raise InvalidEvent("masked", "every entry must be a JSON Pointer starting with '/'", eid)
    caller_text = _text("caller_spiffe_id", caller, eid, limit=limits.max_text_chars)
    if caller_text and not caller_text.startswith("spiffe://"):
        raise InvalidEvent("caller_spiffe_id", f"{caller_text[:64]!r} is not a spiffe:// ID", eid)
    return EventV1(
        event_id=eid,
        time=when,
        service=_match("service", service, _SERVICE, eid, "a service name (lowercase letters, digits, -)"),
        action=_match("action", action, _ACTION, eid, "an action name such as decide or keys.encrypt"),
        outcome=_match("outcome", outcome, _OUTCOME, eid, "an outcome such as ALLOW, DENY or OK"),
        caller=caller_text,
        subject=_text("subject", subject, eid, limit=limits.max_text_chars),
        resource=_text("resource", resource, eid, limit=limits.max_text_chars),
        details=details_text,
        masked=tuple(sorted(set(found) | {p for p in earlier if p})),
        decision_id=_text("decision_id", decision_id, eid, limit=limits.max_id_chars),
        trace_id=_text("trace_id", trace_id, eid, limit=limits.max_id_chars),
    )


def checked_event(
    event_id: str, seconds: int, nanos: int, service: str, action: str, outcome: str, caller: str, subject: str,
    resource: str, details: str, masked: list[str], decision_id: str, trace_id: str, limits: Limits = DEFAULT_LIMITS,
) -> EventV1 | None:  # fmt: skip
    """The event `make_event` makes of one sent with these fields (the time as a protobuf Timestamp's
    seconds and nanos), when the native check (native/audit/src/event.rs) is sure of it: one make_event
    accepts and changes nothing of but the id's case, the time's spelling and the order of the masked
    paths - what ztmesh emitters send. None when it is not sure, or not built: then make_event decides
    (and names the problem). ~40 us an event less on the Append path; tests/audit/test_native_event.py
    holds the two to the same events."""
    if native_check_event is None:
        return None
    sure = native_check_event(
        event_id, seconds, nanos, service, action, outcome, caller, subject, resource, details, masked,
        decision_id, trace_id, limits.max_details_bytes, limits.max_text_chars, limits.max_id_chars, limits.max_masked,
    )  # fmt: skip
    if sure is None:
        return None
    eid, when, paths = sure
    return EventV1(
        eid, when, service, action, outcome, caller, subject, resource, details, tuple(paths), decision_id, trace_id
    )


class EncodedEvents(tuple[EventV1, ...]):
    """Validated events with the encodings of their records for one emitter, from the native pass that
    checked them (`accept_events`): each accepted event's `record_parts` and PostgreSQL COPY columns by
    event id, so the store does not encode them again. A tuple, so the events cannot change under their
    encodings; a store that cannot use them (SQLite, another emitter) reads it as the events alone."""

    emitter: str
    parts: dict[str, tuple[bytes, bytes, bytes]]
    columns: dict[str, str]

    def __new__(
        cls, events: Sequence[EventV1], emitter: str, parts: dict[str, tuple[bytes, bytes, bytes]],
        columns: dict[str, str],
    ) -> EncodedEvents:  # fmt: skip
        made = super().__new__(cls, events)
        made.emitter, made.parts, made.columns = emitter, parts, columns
        return made


Accepted = tuple[list[EventV1 | None], dict[str, tuple[bytes, bytes, bytes]], dict[str, str]]


def accept_events(request: bytes, account: str, emitter: str, limits: Limits = DEFAULT_LIMITS) -> Accepted | None:
    """The events of a serialized AppendRequest from service `account`, as `checked_event` and
    `make_event` would make them, with None for each event the native pass is not sure of (make_event
    decides those), and the accepted events' record parts and COPY columns for `emitter`, by id; None
    when the module is not built or the request is not one its reader understands (every event in
    doubt). ~8-12 us an event less than reading each message's fields in Python
    (native/audit/src/accept.rs; tests/audit/test_native_accept.py holds it to event_from_proto)."""
    if native_accept_events is None:
        return None
    return native_accept_events(
        request, EventV1, account, emitter, _SCHEMA, limits.max_details_bytes, limits.max_text_chars,
        limits.max_id_chars, limits.max_masked,
    )  # fmt: skip


def from_emitted(event: Any, limits: Limits = DEFAULT_LIMITS) -> EventV1:
    """Validate an event from the shared emitter seam (`ztmesh.mesh.auditing.AuditEvent`)."""
    return make_event(
        event_id=event.event_id, time=event.time, service=event.service, action=event.action,
        outcome=event.outcome, caller=event.caller_spiffe_id, subject=event.subject, resource=event.resource,
        details=event.details, masked=getattr(event, "masked", ()), decision_id=event.decision_id,
        trace_id=event.trace_id, limits=limits,
    )  # fmt: skip
