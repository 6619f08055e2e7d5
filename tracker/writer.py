"""The writer thread: decodes, maps and batches events for the committer.

The intake thread only hands raw message bodies over (`Envelope`), so reading
from the broker never waits on the database. The writer replays the spool when
the inbox is empty, coalesces events per job into batches, and hands each full
or old batch to the committer thread (tracker.committer), which writes it and
acknowledges its broker tokens. It also owns the periodic work: the summary log
line, the liveness row, the missing -E warning and orphaned jobs.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from tracker import store
from tracker.batch import Batch
from tracker.committer import Committer
from tracker.config import ListenSettings
from tracker.counters import Counters
from tracker.envelope import Envelope, Inbox
from tracker.events import KOMBU_REDIS_ENVELOPE, decode_message, unwrap_kombu_redis
from tracker.log import get_logger
from tracker.mapping import ORPHANED, MappingContext, map_event
from tracker.spool import Spool
from tracker.workers import WorkerWatch

log = get_logger("writer")

JSON_TYPES = frozenset({None, "", "application/json"})
REPLAY_CHUNK = 1000  # envelopes read back from the spool at a time


class Writer(threading.Thread):
    """Consumes envelopes from `inbox` and writes them in batches."""

    def __init__(
        self,
        engine: Engine,
        settings: ListenSettings,
        inbox: Inbox,
        on_committed: Callable[[list[Any]], None],
        counters: Counters | None = None,
        spool: Spool | None = None,
    ) -> None:
        super().__init__(name="job-tracker-writer", daemon=True)
        self.engine = engine
        self.settings = settings
        self.inbox = inbox
        self.counters = counters or Counters()
        self.context = MappingContext(remote_queues=settings.remote_queues)
        self.workers = WorkerWatch(warn_after=settings.no_task_events_warning)
        self.instance = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started_at = datetime.now(UTC)
        self.spool = spool
        self.replay: deque[Envelope] = deque()  # envelopes read back from the spool
        self.batch = Batch()
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.committer = Committer(engine, self.counters, on_committed, self.stopping,
                                   settings.shutdown_grace, spool)  # fmt: skip
        self._next_stats = time.monotonic() + settings.stats_interval
        self._next_heartbeat = time.monotonic()
        self._window_start = time.monotonic()

    # ------------------------------------------------------------ main loop

    def run(self) -> None:
        """Take envelopes until asked to stop and drained, flushing on size or age."""
        self.committer.start()
        try:
            while True:
                item = self._next_item()
                if item is None and self.stopping.is_set() and self.inbox.empty():
                    break
                if self.committer.gave_up:
                    break
                if item is not None:
                    self.take(item)
                if self._flush_due():
                    self.flush()
                self._periodic()
            self.flush()
            self.committer.finish()
            self.committer.join()
            if self.committer.gave_up:
                self._spool_inbox()
        finally:
            self.finished.set()

    def stop(self) -> None:
        """Ask the writer to flush what it holds and finish (thread-safe)."""
        self.stopping.set()

    def _next_item(self) -> Envelope | None:
        """The next envelope: spool replay first, then the inbox; None when idle."""
        if self.replay:
            return self.replay.popleft()
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            pass
        if self.spool is not None and self.spool.active and not self.stopping.is_set():
            self.replay.extend(self.spool.take(REPLAY_CHUNK))
            self.counters.spool_events = self.spool.pending
            if self.replay:
                return self.replay.popleft()
        if self.stopping.is_set():
            return None
        try:
            return self.inbox.get(timeout=self._wait_time())
        except queue.Empty:
            return None

    def _wait_time(self) -> float:
        """How long to wait for input before the open batch must be flushed."""
        if self.batch.opened_at is None:
            return min(1.0, self.settings.heartbeat_interval)
        age = time.monotonic() - self.batch.opened_at
        return max(0.0, self.settings.flush_interval - age)

    def _flush_due(self) -> bool:
        """True when the open batch is full or old enough."""
        if self.batch.empty or self.batch.opened_at is None:
            return False
        full = self.batch.size >= self.settings.batch_size
        old = time.monotonic() - self.batch.opened_at >= self.settings.flush_interval
        return full or old

    # ------------------------------------------------------------ intake of one message

    def take(self, envelope: Envelope) -> None:
        """Decode the envelope's messages and add their task events to the open batch."""
        for single in envelope.split():
            self._take_one(single)

    def _take_one(self, envelope: Envelope) -> None:
        """Decode one message and add its task events to the open batch."""
        now = time.monotonic()
        self.counters.messages += 1
        body, content_type = envelope.body, envelope.content_type
        if content_type == KOMBU_REDIS_ENVELOPE:
            try:
                body, content_type = unwrap_kombu_redis(body)  # type: ignore[arg-type]
            except ValueError as exc:
                self._skip(str(exc))
                return
        if content_type not in JSON_TYPES:
            self._skip(f"unsupported content type {str(content_type)[:80]!r}")
        else:
            decoded = decode_message(body, envelope.received_at)
            for reason in decoded.errors:
                self._skip(reason)
            for event in decoded.events:
                self.counters.events += 1
                self.workers.observe(event, envelope.received_at)
                if event.is_task_event:
                    self._add_event(event, now)
        if envelope.token is not None:
            self.batch.note_token(envelope.token, now)

    def _add_event(self, event: Any, now: float) -> None:
        """Map one task event into the batch; a mapping bug skips the event, not the daemon."""
        try:
            mapped = map_event(event, self.context)
        except Exception as exc:
            log.exception("event_mapping_failed", event_type=event.type, job_id=event.uuid)
            self._skip(f"mapping failed: {exc!r}"[:300])
            return
        self.batch.add(event, mapped, now)

    def _skip(self, reason: str) -> None:
        """Log and count a message or event that cannot be used."""
        self.counters.skipped += 1
        log.warning("event_skipped", reason=reason)

    # ------------------------------------------------------------ writing

    def flush(self) -> None:
        """Hand the open batch to the committer (its tokens are acknowledged after commit)."""
        batch, self.batch = self.batch, Batch()
        if not batch.empty:
            self.committer.submit(batch)

    def _drain_inbox(self) -> list[Envelope]:
        """Everything still waiting in memory (replayed spool items included)."""
        items: list[Envelope] = list(self.replay)
        self.replay.clear()
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return items
            items.append(item)

    def _spool_inbox(self) -> None:
        """After the committer gave up: keep unread messages on disk for the next start."""
        rest = [e for e in self._drain_inbox() if e.token is None]
        if self.spool is None:
            log.error("events_lost", messages=len(rest), reason="no spool")
            return
        for envelope in rest:
            self.spool.append_many(envelope.split())
        log.warning("spooled_at_stop", messages=len(rest), spool_dir=str(self.spool.directory))

    # ------------------------------------------------------------ periodic work

    def _periodic(self) -> None:
        """Summary log line, liveness row and the missing -E warning, when due."""
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_interval
            self._log_summary(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_interval
            self._heartbeat()
            for host in self.workers.silent_workers(time.time()):
                log.warning(
                    "worker_without_task_events",
                    worker=host,
                    hint="start workers with -E (or run `celery control enable_events`); "
                    "job-tracker only sees task-progress from this worker",
                )
            for host, reason in self.workers.gone_workers(time.time()):
                self._flag_orphans(host, reason)

    def _flag_orphans(self, host: str, reason: str) -> None:
        """Mark the PROCESSING jobs of a vanished worker as orphaned (not terminal)."""
        try:
            job_ids = store.processing_jobs_on(self.engine, host)
        except store.StoreError as exc:
            log.warning("orphan_check_failed", worker=host, error=str(exc))
            return
        now = time.time()
        events = [{"type": ORPHANED, "uuid": job_id, "timestamp": now, "hostname": "job-tracker",
                   "orphaned": True, "orphaned_worker": host, "orphaned_reason": reason}
                  for job_id in job_ids]  # fmt: skip
        log.warning("worker_gone", worker=host, reason=reason, orphaned_jobs=len(job_ids))
        if events:
            self.take(Envelope(body=events, received_at=now))

    def _log_summary(self, now: float) -> None:
        """The periodic summary: throughput, totals and lag percentiles."""
        elapsed = max(1e-9, now - self._window_start)
        applied, self.counters.window_events = self.counters.window_events, 0
        lags = sorted(self.counters.lags)
        self.counters.lags.clear()
        log.info(
            "summary",
            events_per_s=round(applied / elapsed, 1),
            messages=self.counters.messages,
            events_received=self.counters.events,
            events_applied=self.counters.events_applied,
            batches=self.counters.batches,
            jobs_written=self.counters.jobs_written,
            skipped=self.counters.skipped,
            dead=self.counters.dead,
            errors=self.counters.errors,
            backlog=self.inbox.qsize(),
            lag_p50_s=_percentile(lags, 0.5),
            lag_p99_s=_percentile(lags, 0.99),
        )
        self._window_start = now

    def _heartbeat(self) -> None:
        """Refresh this tracker's row in job_tracker_instances (best effort)."""
        c = self.counters
        counters = {
            "last_event_at": c.last_event_at,
            "events_applied": c.events_applied,
            "errors": c.errors,
            "gaps": c.gaps,
            "spool_events": c.spool_events,
        }
        try:
            store.record_heartbeat(
                self.engine, self.instance, os.getpid(), self.started_at, counters
            )
        except store.StoreError as exc:
            log.warning("heartbeat_failed", error=str(exc))


def _percentile(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted values, rounded to milliseconds."""
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)
