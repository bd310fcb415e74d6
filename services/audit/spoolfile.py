"""The spool's files: append-only segments of CRC-framed events, and a cursor saying how far audit
has acknowledged them.

A frame is `u32 length | u32 CRC-32 | payload` (big-endian). Segments are only appended to and fsync'd;
a crash can leave a torn last frame, which opening truncates (its emitter was never told it was durable).
Damage anywhere else (a flipped bit, a bad sector), or a last frame that an interrupted write cannot have
left, is not a torn write: the damaged bytes are copied to `corrupt/` beside the segments and reported,
and reading resumes at the next frame whose checksum holds.
The cursor (`segment offset`) is replaced atomically (write, fsync, rename, fsync the folder).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct(">II")
_PAYLOAD_START = ord("{")  # every payload is a JSON object: where to look for the next intact frame
Position = tuple[int, int]  # (segment number, byte offset)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Damage:
    """Bytes of a segment that are not intact frames, and where they were set aside."""

    segment: int
    frame: int  # number of the damaged frame in its segment, counting from 0
    offset: int  # byte offset in the segment
    length: int
    quarantined: Path
    torn: bool  # a torn write at the end of the last segment (never acknowledged), not corruption


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame_at(data: bytes, offset: int) -> bytes | None:
    """The payload of the intact frame starting at `offset`, or None."""
    if offset + _HEADER.size > len(data):
        return None
    length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if length == 0 or end > len(data):  # an empty frame is never written: zeros are not frames
        return None
    payload = data[offset + _HEADER.size : end]
    return payload if zlib.crc32(payload) == crc else None


def _next_intact(data: bytes, start: int) -> int:
    """Offset of the first intact frame at or after `start`, else len(data). A false match needs a 32-bit
    checksum to agree by chance, and payloads start with `{`, so only those offsets are tried."""
    search = start + _HEADER.size
    while True:
        brace = data.find(_PAYLOAD_START, search)
        if brace < 0:
            return len(data)
        if _frame_at(data, brace - _HEADER.size) is not None:
            return brace - _HEADER.size
        search = brace + 1


def _scan(data: bytes) -> Iterator[tuple[int, int, bytes | None]]:
    """(start, end, payload) of each frame in `data`; payload None for a damaged stretch, which ends where
    the next intact frame begins (or at the end of `data`)."""
    offset = 0
    while offset < len(data):
        payload = _frame_at(data, offset)
        end = offset + _HEADER.size + len(payload) if payload is not None else _next_intact(data, offset + 1)
        yield offset, end, payload
        offset = end


def _is_torn(data: bytes, start: int, longest: int) -> bool:
    """Whether the damaged stretch from `start` to the end of the data is what an interrupted write leaves:
    a header cut short, zeros (the size grew, the data never landed), or a plausible header (a length of at
    most `longest` that runs past the end) followed by the start of a payload. Anything else is corruption,
    never cut off: notably an acknowledged last frame whose length field took a flipped bit, which looks
    cut short but whose bytes present are its whole payload (their checksum holds)."""
    tail = data[start:]
    if len(tail) < _HEADER.size or not tail.strip(b"\0"):
        return True
    length, crc = _HEADER.unpack_from(tail)
    present = tail[_HEADER.size :]
    if length == 0 or length > longest or _HEADER.size + length <= len(tail):
        return False
    if present and present[0] != _PAYLOAD_START:
        return False
    return zlib.crc32(present) != crc


class SpoolFiles:
    def __init__(self, directory: Path, segment_bytes: int, on_damage: Callable[[Damage], None] | None = None) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.rejected_path = directory / "rejected.jsonl"
        self.corrupt_dir = directory / "corrupt"
        self.on_damage = on_damage
        self._reported: set[Position] = set()
        self._damage_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cursor: Position = self._load_cursor()
        segments = self._segments()
        if segments and segments[-1] >= self._cursor[0]:
            self._active = segments[-1]
            self._repair(self._active)
        else:
            self._active = max(self._cursor[0], 1)
        for stale in (s for s in segments if s < self._cursor[0]):
            self._path(stale).unlink(missing_ok=True)  # acknowledged before a crash interrupted their removal
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._end = os.fstat(self._fd).st_size  # durable end of the active segment
        _fsync_dir(directory)
        self._used = self._measure()

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def _load_cursor(self) -> Position:
        try:
            seg, offset = (self.directory / "cursor").read_text().split()
            return int(seg), int(offset)
        except FileNotFoundError:
            first = self._segments()
            return (first[0] if first else 1, 0)
        except ValueError:
            raise OSError(f"{self.directory / 'cursor'} is corrupt; inspect the spool before restarting") from None

    def _repair(self, segment: int) -> None:
        """Truncate a torn tail of the last segment (set aside first). A damaged tail no interrupted write
        explains is kept and reported as corruption now, like damage before intact frames, which stays
        for the reader to quarantine and pass over."""
        path = self._path(segment)
        data = path.read_bytes()
        tail = collections.deque(_scan(data), maxlen=1)
        if not tail:
            return
        start, _end, payload = tail[0]
        if payload is not None or (segment, start) < self._cursor:  # intact, or shipped before the damage
            return
        if not _is_torn(data, start, self.segment_bytes):
            self._quarantine(segment, start, data[start:])
            return
        self._quarantine(segment, start, data[start:], torn=True)
        with open(path, "r+b") as handle:
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())

    def _frame_number(self, segment: int, offset: int) -> int:
        try:
            data = self._path(segment).read_bytes()[:offset]
        except FileNotFoundError:
            return -1
        return sum(1 for _ in _scan(data))

    def _quarantine(self, segment: int, offset: int, data: bytes, torn: bool = False) -> None:
        """Copy damaged bytes to corrupt/ (durably, before the cursor may pass them) and report them once."""
        with self._damage_lock:
            if (segment, offset) in self._reported:
                return
            self._reported.add((segment, offset))
        self.corrupt_dir.mkdir(exist_ok=True)
        target = self.corrupt_dir / f"{segment:012d}-{offset}{'-torn' if torn else ''}.bin"
        with open(target, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.corrupt_dir)
        if self.on_damage is not None:
            self.on_damage(Damage(segment, self._frame_number(segment, offset), offset, len(data), target, torn))

    def quarantine_frame(self, position: Position, payload: bytes) -> None:
        """Set aside an intact frame whose payload is not an event (its checksum held, its content not)."""
        self._quarantine(position[0], position[1] - len(payload) - _HEADER.size, payload)

    def _measure(self) -> int:
        total = 0
        for seg in self._segments():
            if seg >= self._cursor[0]:
                total += self._path(seg).stat().st_size - (self._cursor[1] if seg == self._cursor[0] else 0)
        return total

    # --- writer (the committer thread) --------------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> None:
        """Write frames and fsync them; on return they survive a crash."""
        blob = b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        try:
            written = os.write(self._fd, blob)
            if written != len(blob):
                raise OSError(f"short write to the audit spool ({written} of {len(blob)} bytes)")
            os.fsync(self._fd)
        except OSError:
            self._discard_partial_write()
            raise
        with self._lock:
            self._end += len(blob)
            self._used += len(blob)
            if self._end >= self.segment_bytes:
                self._rotate()

    def _discard_partial_write(self) -> None:
        """Cut what a failed append left after the last acknowledged frame. Left there, those bytes would
        sit before every later frame: the reader, which stops at the acknowledged end, would take the last
        frame of each later group for a torn one and set an acknowledged event aside. If the cut fails too,
        the file can no longer be trusted to grow: refuse every later append (fail closed)."""
        try:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
        except OSError as exc:
            log.error(
                "audit spool %s: cannot cut a failed write back (%s); refusing further appends", self.directory, exc
            )
            os.close(self._fd)
            self._fd = os.open(os.devnull, os.O_RDONLY)  # every later os.write fails: the caller spools nothing

    def _rotate(self) -> None:
        os.close(self._fd)
        self._active += 1
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._end = 0
        _fsync_dir(self.directory)

    # --- reader (the shipper thread) ----------------------------------------------------------------------

    def _frames_from(self, seg: int, offset: int, limit: int) -> tuple[list[tuple[Position, bytes]], Position]:
        """Up to `limit` durable frames from (seg, offset), and where reading stopped. Damaged stretches
        are quarantined and passed over (reading stops after one, so the cursor can move past it)."""
        with self._lock:
            active, end = self._active, self._end
        out: list[tuple[Position, bytes]] = []
        position = (seg, offset)
        while len(out) < limit and (seg < active or offset < end):
            try:
                with open(self._path(seg), "rb") as handle:
                    handle.seek(offset)
                    data = handle.read((end - offset) if seg == active else -1)
            except FileNotFoundError:
                data = b""
            for start, frame_end, payload in _scan(data):
                position = (seg, offset + frame_end)
                if payload is None:
                    self._quarantine(seg, offset + start, data[start:frame_end])
                    return out, position
                out.append((position, payload))
                if len(out) == limit:
                    return out, position
            if seg == active:
                return out, position
            seg, offset = seg + 1, 0  # a finished segment: continue in the next one
            if not out:
                position = (seg, 0)
        return out, position

    def read_batch(self, limit: int) -> list[tuple[Position, bytes]]:
        """Up to `limit` durable frames after the cursor, each with the position just past it."""
        with self._lock:
            cursor = self._cursor
        frames, stopped = self._frames_from(*cursor, limit)
        if not frames and stopped > cursor:
            self.advance(stopped)  # only finished, fully acknowledged segments lay between
        return frames

    def advance(self, position: Position) -> None:
        """Persist that everything before `position` was acknowledged, and drop finished segments."""
        tmp = self.directory / "cursor.tmp"
        with open(tmp, "w") as handle:
            handle.write(f"{position[0]} {position[1]}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / "cursor")
        _fsync_dir(self.directory)
        with self._lock:
            old = self._cursor
            self._cursor = position
            for seg in range(old[0], position[0]):
                self._path(seg).unlink(missing_ok=True)
            self._used = self._measure()

    def empty(self) -> bool:
        with self._lock:
            return self._cursor >= (self._active, self._end)

    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def count_unshipped(self) -> int:
        with self._lock:
            position = self._cursor
        count = 0
        while True:
            frames, stopped = self._frames_from(*position, 10_000)
            count += len(frames)
            if stopped <= position:
                return count
            position = stopped

    def dead_letter(self, payload: bytes, reason: str) -> None:
        line = json.dumps({"reason": reason, "event": json.loads(payload)}, ensure_ascii=False) + "\n"
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        os.close(self._fd)
