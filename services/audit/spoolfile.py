"""The spool's files: append-only segments of CRC-framed events, and a cursor saying how far audit
has acknowledged them.

A frame is `u32 length | u32 CRC-32 | payload` (big-endian). Segments are only appended to and fsync'd;
a crash can leave a torn last frame, which opening truncates (its emitter was never told it was durable).
The cursor (`segment offset`) is replaced atomically (write, fsync, rename, fsync the folder).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

_HEADER = struct.Struct(">II")
Position = tuple[int, int]  # (segment number, byte offset)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_prefix(data: bytes) -> list[tuple[int, bytes]]:
    """Frames at the start of `data` as (end offset, payload), stopping at the first torn or corrupt one."""
    frames, offset = [], 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data):
            break
        payload = data[offset + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        frames.append((end, payload))
        offset = end
    return frames


class SpoolFiles:
    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.rejected_path = directory / "rejected.jsonl"
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
        path = self._path(segment)
        data = path.read_bytes()
        frames = _valid_prefix(data)
        good = frames[-1][0] if frames else 0
        if good < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())

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
        written = os.write(self._fd, blob)
        if written != len(blob):
            raise OSError(f"short write to the audit spool ({written} of {len(blob)} bytes)")
        os.fsync(self._fd)
        with self._lock:
            self._end += len(blob)
            self._used += len(blob)
            if self._end >= self.segment_bytes:
                self._rotate()

    def _rotate(self) -> None:
        os.close(self._fd)
        self._active += 1
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._end = 0
        _fsync_dir(self.directory)

    # --- reader (the shipper thread) ----------------------------------------------------------------------

    def _frames_from(self, seg: int, offset: int, limit: int) -> tuple[list[tuple[Position, bytes]], Position]:
        """Up to `limit` durable frames from (seg, offset), and where reading stopped."""
        with self._lock:
            active, end = self._active, self._end
        out: list[tuple[Position, bytes]] = []
        while len(out) < limit and (seg < active or offset < end):
            try:
                with open(self._path(seg), "rb") as handle:
                    handle.seek(offset)
                    data = handle.read((end - offset) if seg == active else -1)
            except FileNotFoundError:
                data = b""
            for frame_end, payload in _valid_prefix(data):
                out.append(((seg, offset + frame_end), payload))
                if len(out) == limit:
                    return out, out[-1][0]
            if seg == active:
                return out, (out[-1][0] if out else (seg, offset))
            seg, offset = seg + 1, 0  # a finished segment: continue in the next one
        return out, (out[-1][0] if out and out[-1][0][0] == seg else (seg, offset))

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
            frames, position = self._frames_from(*position, 10_000)
            if not frames:
                return count
            count += len(frames)

    def dead_letter(self, payload: bytes, reason: str) -> None:
        line = json.dumps({"reason": reason, "event": json.loads(payload)}, ensure_ascii=False) + "\n"
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        os.close(self._fd)
