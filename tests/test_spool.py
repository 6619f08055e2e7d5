"""The on-disk spool: order, draining, restart replay, one tracker per directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker import spool as spool_module
from tracker.envelope import Envelope
from tracker.spool import Spool, SpoolLockedError


def envelope(i: int) -> Envelope:
    """A numbered envelope."""
    return Envelope(body=f'{{"n": {i}}}'.encode(), received_at=1000.0 + i)


def test_spool_returns_envelopes_in_order_and_deactivates_when_drained(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert not spool.active
    for i in range(10):
        spool.append(envelope(i))
    assert spool.active and spool.pending == 10
    first = spool.take(4)
    spool.append(envelope(10))
    rest = spool.take(100)
    assert [e.received_at for e in first + rest] == [1000.0 + i for i in range(11)]
    assert rest[0].body == b'{"n": 4}'
    assert rest[0].content_type == "application/json"
    assert not spool.active and spool.pending == 0
    assert spool.take(10) == []
    spool.close()


def test_spool_left_by_a_stopped_tracker_is_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(envelope(i))
    spool.take(2)
    spool.close()
    again = Spool(tmp_path)
    assert again.active and again.pending == 5  # unacknowledged reads are replayed again
    assert [e.received_at for e in again.take(100)] == [1000.0 + i for i in range(5)]
    assert not again.active
    again.close()


def test_truncated_tail_of_a_crashed_write_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(envelope(0))
    spool.append(envelope(1))
    spool.close()
    segment = next(tmp_path.glob("segment-*.log"))
    segment.write_bytes(segment.read_bytes()[:-3])
    again = Spool(tmp_path)
    assert [e.received_at for e in again.take(10)] == [1000.0]
    again.close()


def test_segments_roll_over_and_are_deleted_once_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 200)
    monkeypatch.setattr(spool_module, "CHUNK_BYTES", 64)
    spool = Spool(tmp_path)
    for i in range(30):
        spool.append(envelope(i))
    assert len(list(tmp_path.glob("segment-*.log"))) > 3
    taken = [e.received_at for _ in range(40) for e in spool.take(7)]
    assert taken == [1000.0 + i for i in range(30)]
    assert list(tmp_path.glob("segment-*.log")) == []
    spool.close()


def test_one_tracker_per_spool_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path)
    spool.close()
