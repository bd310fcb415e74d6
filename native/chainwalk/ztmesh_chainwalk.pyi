"""The audit verifier's native walk (src/lib.rs): services/audit/parallel_verify.py is its only caller."""

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
    ) -> None: ...
    @property
    def next_sequence(self) -> int: ...
    def feed(self, data: bytes) -> bool: ...
    def restart(self) -> None: ...
    def finish(self) -> tuple[int, bytes, bool, list[bytes], dict[int, list[bytes]]]: ...

def canonical_record(tuple: bytes, schema: bytes) -> bytes | None: ...
