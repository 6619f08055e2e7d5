"""The committer thread: writes finished batches to PostgreSQL, one transaction each.

It runs beside the writer so that mapping the next batch (Python) overlaps with
PostgreSQL executing this one. Batches are committed in the order they were made,
so broker tokens are acknowledged in order. A failed batch is retried with backoff
until it commits (never dropped); a batch PostgreSQL refuses is split until the
refused event is isolated and kept in `job_tracker_dead_events`. Only a stop request
ends the retrying: after `shutdown_grace` seconds it spools what it holds instead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from tracker import store
from tracker.batch import Batch, batch_of
from tracker.counters import Counters
from tracker.envelope import Envelope
from tracker.log import get_logger
from tracker.spool import Spool

log = get_logger("committer")

MAX_BACKOFF = 5.0
PIPELINE_DEPTH = 2  # batches waiting behind the one being written


class _GiveUp(Exception):
    """Stop requested while PostgreSQL stays unreachable."""


class Committer(threading.Thread):
    """Commits batches in order and reports their broker tokens as committed."""

    def __init__(self, engine: Engine, counters: Counters,
                 on_committed: Callable[[list[Any]], None], stopping: threading.Event,
                 shutdown_grace: float, spool: Spool | None) -> None:  # fmt: skip
        super().__init__(name="job-tracker-committer", daemon=True)
        self.engine = engine
        self.counters = counters
        self.on_committed = on_committed
        self.stopping = stopping
        self.shutdown_grace = shutdown_grace
        self.spool = spool
        self.batches: queue.Queue[Batch | None] = queue.Queue(maxsize=PIPELINE_DEPTH)
        self.gave_up = False

    def submit(self, batch: Batch) -> None:
        """Queue a batch for writing (blocks while PIPELINE_DEPTH batches wait)."""
        self.batches.put(batch)

    def finish(self) -> None:
        """Write what is queued, then end."""
        self.batches.put(None)

    def run(self) -> None:
        """Commit batches until `finish`; after giving up, spool them instead."""
        while (batch := self.batches.get()) is not None:
            if self.gave_up:
                self._spool(batch)
                continue
            try:
                self._commit_retrying(batch)
            except _GiveUp:
                self.gave_up = True
                self._spool(batch)
                continue
            self.on_committed(batch.tokens)

    def _commit_retrying(self, batch: Batch) -> None:
        """Write a batch; on a transient error wait and try again until it commits."""
        if not batch.items:
            return
        delay = 0.1
        stop_seen: float | None = None
        while True:
            try:
                self._commit_isolating(batch)
                return
            except store.TransientStoreError as exc:
                self.counters.errors += 1
                log.error("batch_retry", error=str(exc), events=batch.size, retry_in=delay)
            if self.stopping.is_set():
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen >= self.shutdown_grace:
                    raise _GiveUp
            time.sleep(delay)
            delay = min(MAX_BACKOFF, delay * 2)

    def _commit_isolating(self, batch: Batch) -> None:
        """Write a batch; if PostgreSQL refuses its data, split it to isolate the culprit."""
        try:
            store.apply_batch(self.engine, batch.sorted_jobs(), batch.history.values())
        except store.BadDataError as exc:
            if batch.size == 1:
                self._keep_dead(batch, str(exc))
                return
            half = batch.size // 2
            self._commit_isolating(batch_of(batch.items[:half]))
            self._commit_isolating(batch_of(batch.items[half:]))
            return
        self._count_commit(batch)

    def _keep_dead(self, batch: Batch, error: str) -> None:
        """Store a refused event in job_tracker_dead_events and log it."""
        event, _ = batch.items[0]
        self.counters.dead += 1
        self.counters.errors += 1
        log.error("event_refused", error=error, event_type=event.type, job_id=event.uuid)
        store.store_dead_events(self.engine, error, [dict(event.fields)])

    def _count_commit(self, batch: Batch) -> None:
        """Update counters and lag samples after a commit."""
        now = time.time()
        c = self.counters
        c.batches += 1
        c.events_applied += batch.size
        c.jobs_written += len(batch.jobs)
        c.window_events += batch.size
        c.last_event_at = datetime.now(UTC)
        c.lags.extend(now - event.timestamp for event, _ in batch.items[-200:])
        if len(c.lags) > 20_000:
            del c.lags[:10_000]

    def _spool(self, batch: Batch) -> None:
        """Keep a batch's events on disk for the next start (stop with PostgreSQL away).

        Messages with a broker token (AMQP, acknowledged after commit) are not kept:
        they were never acknowledged, so the broker delivers them again.
        """
        raw = [dict(event.fields) for event, _ in batch.items]
        if not raw:
            return
        if self.spool is None:
            log.error("events_lost", events=len(raw), reason="no spool")
            return
        self.spool.append(Envelope(body=raw, received_at=time.time()))
        log.warning("spooled_at_stop", events=len(raw), spool_dir=str(self.spool.directory))
