"""The audit service's native code (src/lib.rs). The walk (src/walk.rs): services/audit/parallel_verify.py
is its only caller; the event check (src/event.rs): record.checked_event is; the Append request's
events in one pass (src/accept.rs): record.accept_events is; the append step (src/append.rs):
chain.extend_into_tree and store_postgres._Encoded are."""

from collections.abc import Sequence
from typing import Any

class BinaryWalk:
    def __init__(
        self,
        first: int,
        anchor: bytes,
        heads: dict[int, list[bytes]],
        seed: list[tuple[int, bytes]] | None,
        sizes: list[int],
        bits: int,
        schema: bytes,
        early_limit: int = 16384,
    ) -> None: ...
    @property
    def next_sequence(self) -> int: ...
    def feed(self, data: bytes) -> bool: ...
    def restart(self) -> None: ...
    def finish(self) -> tuple[int, bytes, bool, list[bytes], dict[int, list[bytes]]]: ...

def canonical_record(tuple: bytes, schema: bytes) -> bytes | None: ...

def check_event(
    event_id: str,
    seconds: int,
    nanos: int,
    service: str,
    action: str,
    outcome: str,
    caller: str,
    subject: str,
    resource: str,
    details: str,
    masked: list[str],
    decision_id: str,
    trace_id: str,
    max_details_bytes: int,
    max_text_chars: int,
    max_id_chars: int,
    max_masked: int,
) -> tuple[str, str, list[str]] | None: ...
def accept_events(
    request: bytes,
    event_class: type,
    account: str,
    emitter: str,
    schema: bytes,
    max_details_bytes: int,
    max_text_chars: int,
    max_id_chars: int,
    max_masked: int,
) -> tuple[list[Any], dict[str, tuple[bytes, bytes, bytes]], dict[str, str]] | None: ...
def details_sure(text: str, max_bytes: int) -> bool: ...
def append_records(
    prev: bytes,
    sequence: int,
    recorded_at: str,
    parts: list[tuple[bytes, bytes, bytes]],
    frontier: list[tuple[int, bytes]],
) -> tuple[list[bytes], list[tuple[tuple[int, int], bytes]], list[tuple[int, bytes]]]: ...
def encode_records(
    events: Sequence[Any], emitter: str, schema: bytes
) -> list[tuple[bytes, bytes, bytes, str] | None]: ...
