"""Repairing jobs after a gap in the event stream, from the Celery result backend.

After a broker disconnection or a tracker restart, events may have been missed:
a job that finished meanwhile would stay PROCESSING forever. The reconciler reads
the state of every recent non-terminal job from the result backend and, when the
backend knows a terminal state, feeds a synthetic event (marked
`source: result-backend`) through the normal path, so the merge rules apply and
the history says where the state came from.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr
from sqlalchemy.engine import Engine

from tracker import store
from tracker.envelope import Envelope
from tracker.log import get_logger

log = get_logger("reconcile")

SOURCE = "result-backend"
HOSTNAME = "job-tracker (reconcile)"
PAGE = 200


def reconciled_event(job_id: str, state: str, result: Any, traceback: str | None,
                     date_done: datetime | None, now: float) -> dict[str, Any] | None:  # fmt: skip
    """The synthetic event for a backend state, or None when the state is not terminal."""
    timestamp = date_done.replace(tzinfo=date_done.tzinfo or UTC).timestamp() if date_done else now
    base = {"uuid": job_id, "timestamp": timestamp, "hostname": HOSTNAME, "source": SOURCE}
    if state == "SUCCESS":
        return {**base, "type": "task-succeeded", "result": saferepr(result, 1024)}
    if state == "FAILURE":
        return {**base, "type": "task-failed", "exception": saferepr(result, 1024),
                "traceback": traceback or ""}  # fmt: skip
    if state == "REVOKED":
        return {**base, "type": "task-revoked", "terminated": False, "expired": False}
    return None


class Reconciler(threading.Thread):
    """Runs reconciliation passes on request, away from the intake and the writer."""

    def __init__(self, engine: Engine, app: Celery, submit: Callable[[Envelope], None],
                 lookback_hours: float) -> None:  # fmt: skip
        super().__init__(name="job-tracker-reconcile", daemon=True)
        self.engine = engine
        self.app = app
        self.submit = submit
        self.lookback = timedelta(hours=lookback_hours)
        self.requests: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def request(self, reason: str) -> None:
        """Ask for a pass (thread-safe)."""
        self.requests.put(reason)

    def stop(self) -> None:
        """Finish after the current pass."""
        self.requests.put(None)

    def run(self) -> None:
        """Serve pass requests until stopped; a failing pass is logged, never fatal."""
        while (reason := self.requests.get()) is not None:
            try:
                self.reconcile(reason)
            except Exception as exc:
                log.error("reconcile_failed", reason=reason, error=repr(exc)[:300])

    def reconcile(self, reason: str) -> int:
        """One pass over recent non-terminal jobs; returns how many were repaired."""
        since = datetime.now(UTC) - self.lookback
        checked = repaired = 0
        after = ""
        while page := store.non_terminal_jobs(self.engine, since, after, PAGE):
            after = page[-1]
            events = [e for job_id in page if (e := self._event_for(job_id)) is not None]
            checked += len(page)
            repaired += len(events)
            if events:
                self.submit(Envelope(body=events, received_at=time.time()))
        log.info("reconciled", reason=reason, checked=checked, repaired=repaired)
        return repaired

    def _event_for(self, job_id: str) -> dict[str, Any] | None:
        """The synthetic event for one job, from its backend state."""
        result = AsyncResult(job_id, app=self.app)
        state = result.state
        if state not in ("SUCCESS", "FAILURE", "REVOKED"):
            return None
        return reconciled_event(job_id, state, result.result, result.traceback,
                                _date(result.date_done), time.time())  # fmt: skip


def _date(value: Any) -> datetime | None:
    """The backend's date_done (a datetime or an ISO string, depending on the backend)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
