"""Attack: getting a credential into the audit trail past sanitization by spelling its key so the fast
path does not recognise it. `is_secret_key` joins a key's words, so "to-ken", "pass_word" and
"se.cret" name secrets as much as "token"; the fast paths that skip the sanitizing walk for details an
emitter already sanitized (the native check and `sanitize.unchanged`) once kept such keys, and their
values were stored. Through the real audit service: each is erased and reported masked, and no secret
value is stored."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests.audit.factory import Backend, events
from tests.audit.test_service import audit_service, request_of
from ztmesh._proto.audit.v1 import audit_pb2
from ztmesh.audit import canonical
from ztmesh.audit.record import EventV1

SECRETS = {"to-ken": "tok-3141", "pass_word": "hunter2-2718", "se.cret": "s3cr3t-1618", "a_pi-key": "ak-1414"}


def test_split_secret_keys_are_erased_not_stored(pki, backend: Backend, native: ModuleType, tmp_path: Path) -> None:
    """(`native`: the native check is one of the fast paths under attack, so it must be there.)"""
    if backend.kind == "sqlite":
        backend.dsn = str(tmp_path / "audit" / "audit.db")  # where the service keeps its embedded trail
    event = events(1)[0]
    # As an emitter sends it: canonical JSON text, keys sorted, nothing the emitter itself masked.
    sent = EventV1(**{**_fields(event), "details": canonical.dumps({**SECRETS, "outcome_reason": "ok"})})
    with audit_service(pki, backend, tmp_path) as audit:
        audit.stub(pki, "policy").Append(request_of([sent]), timeout=10)
        replies = audit.stub(pki, "client").Query(audit_pb2.QueryRequest(page_size=10), timeout=10)
        (record,) = [r for reply in replies for r in reply.records]
    assert record.event.details_json == '{"outcome_reason":"ok"}'
    assert {f"/{key}" for key in SECRETS} <= set(record.event.masked_paths)
    assert not any(value in str(record) for value in SECRETS.values())


def _fields(event: EventV1) -> dict:
    return {name: getattr(event, name) for name in EventV1.__slots__}  # type: ignore[attr-defined]
