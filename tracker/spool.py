"""An on-disk overflow for event messages the writer cannot take yet (Redis has no buffer).

While it is active, the intake appends every message here instead of to the in-memory
inbox, and the writer replays it (oldest first) once the inbox is empty; then the
intake goes back to the inbox. Messages are therefore written in arrival order.
Records are length-prefixed and fsynced at least every `FSYNC_INTERVAL` seconds; a
spool left by a stopped tracker is replayed at the next start. One tracker per
directory (an exclusive lock file says so).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from tracker.envelope import Envelope

HEADER = struct.Struct("<IdH")  # body length, received_at, content-type length
FSYNC_INTERVAL = 0.05
SEGMENT_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


class SpoolLockedError(Exception):
    """Another tracker uses this spool directory."""


class Spool:
    """Append-only segment files of envelopes, read back in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = (directory / "lock").open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLockedError(
                f"spool directory {directory} is used by another tracker"
            ) from None
        self._lock = threading.Lock()
        self._writer: IO[bytes] | None = None
        self._write_seq = self._last_seq()
        self._read_seq, self._read_offset = self._first_seq(), 0
        self._last_sync = time.monotonic()
        self.pending = self._count_existing()
        self.active = self.pending > 0

    # ------------------------------------------------------------ segments

    def _segments(self) -> list[int]:
        """Sequence numbers of the segment files on disk, oldest first."""
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("segment-*.log"))

    def _path(self, seq: int) -> Path:
        """The file of segment `seq`."""
        return self.directory / f"segment-{seq:08d}.log"

    def _first_seq(self) -> int:
        """The oldest segment (or the next one to write)."""
        segments = self._segments()
        return segments[0] if segments else self._write_seq

    def _last_seq(self) -> int:
        """The segment to append to: a fresh one after any left by an earlier run."""
        segments = self._segments()
        return segments[-1] + 1 if segments else 0

    def _count_existing(self) -> int:
        """Records left on disk by an earlier run."""
        return sum(
            sum(1 for _ in _records(self._path(seq).read_bytes())) for seq in self._segments()
        )

    # ------------------------------------------------------------ intake side

    def append(self, envelope: Envelope) -> None:
        """Write one envelope at the end of the spool (intake thread)."""
        self.append_many([envelope])

    def append_many(self, envelopes: list[Envelope]) -> None:
        """Write envelopes at the end of the spool in one write (intake thread)."""
        records = b"".join(encode(e) for e in envelopes)
        with self._lock:
            if self._writer is None:
                self._writer = self._path(self._write_seq).open("ab")
            self._writer.write(records)
            self._writer.flush()
            self.pending += len(envelopes)
            self.active = True
            now = time.monotonic()
            if now - self._last_sync >= FSYNC_INTERVAL:
                os.fsync(self._writer.fileno())
                self._last_sync = now
            if self._writer.tell() >= SEGMENT_BYTES:
                self._close_writer()
                self._write_seq += 1

    def _close_writer(self) -> None:
        """fsync and close the segment being written."""
        if self._writer is not None:
            os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------ writer side

    def take(self, limit: int) -> list[Envelope]:
        """Up to `limit` envelopes, oldest first; deactivates the spool once it is drained.

        Reading and parsing happen outside the lock, so that the intake's appends never
        wait for them (an intake that stops reading is one Redis disconnects).
        """
        items: list[Envelope] = []
        while len(items) < limit:
            with self._lock:
                seq, offset = self._read_seq, self._read_offset
                live = seq == self._write_seq
            path = self._path(seq)
            chunk, eof = _read_from(path, offset)
            consumed = 0
            for envelope, end in _records(chunk):
                items.append(envelope)
                consumed = end
                if len(items) >= limit:
                    break
            self._read_offset = offset + consumed  # only this (writer) thread moves it
            if len(items) >= limit or not eof:
                continue
            if live and consumed < len(chunk):
                break  # the intake is writing that record right now: take it next time
            if not self._advance_segment(path, seq):
                break
        with self._lock:
            self.pending = max(0, self.pending - len(items))
        return items

    def _advance_segment(self, path: Path, seq: int) -> bool:
        """After reading a whole segment: delete it and move on; False at the live end."""
        with self._lock:
            if seq == self._write_seq:
                if path.exists() and path.stat().st_size > self._read_offset:
                    return True  # appended to since we read it: read on
                # Drained: the intake may use the in-memory inbox again.
                self._close_writer()
                path.unlink(missing_ok=True)
                self._write_seq += 1
                self._read_seq, self._read_offset = self._write_seq, 0
                self.pending = 0
                self.active = False
                return False
            path.unlink(missing_ok=True)
            self._read_seq, self._read_offset = self._read_seq + 1, 0
            return True

    def close(self) -> None:
        """fsync and release the directory."""
        with self._lock:
            self._close_writer()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()


def encode(envelope: Envelope) -> bytes:
    """One spool record."""
    body = envelope.body
    if isinstance(body, str):
        raw = body.encode("utf-8", "surrogatepass")
    elif isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
    else:
        raw = orjson.dumps(body, default=repr)
    ctype = (envelope.content_type or "").encode()[:200]
    return HEADER.pack(len(raw), envelope.received_at, len(ctype)) + ctype + raw


def _read_from(path: Path, offset: int) -> tuple[bytes, bool]:
    """A chunk of a segment from `offset` (at least one whole record), and whether it ends it."""
    if not path.exists():
        return b"", True
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(CHUNK_BYTES)
        if len(data) >= HEADER.size:
            length, _, ctype_len = HEADER.unpack_from(data)
            needed = HEADER.size + ctype_len + length
            if needed > len(data):
                data += f.read(needed - len(data))
        eof = not f.read(1)
    return data, eof


def _records(data: bytes, offset: int = 0) -> Any:
    """Yield (envelope, end offset) of each complete record after `offset`."""
    while offset + HEADER.size <= len(data):
        length, received_at, ctype_len = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + ctype_len + length
        if end > len(data):
            return  # a record cut by a crash mid-write: not complete, not replayed
        ctype = data[start : start + ctype_len].decode() or None
        body = data[start + ctype_len : end]
        yield Envelope(body=body, received_at=received_at, content_type=ctype), end
        offset = end
