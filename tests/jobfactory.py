"""Fixture jobs for the service and CLI tests, written exactly as the listener writes them:
raw Celery event dicts, parsed, mapped, folded into a writer Batch, then store.apply_batch.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import sqlalchemy as sa

from tests.lifecycles import batch_for
from tracker import store

PRODUCER = "gen1@web-1"
WORKER = "celery@worker-1"
_clock = itertools.count(1)


def new_id() -> str:
    """A task id like Celery's."""
    return str(uuid.uuid4())


def hour_base(hours_ago: int = 3) -> float:
    """A whole-second timestamp some hours ago (durations then stay exact in PostgreSQL)."""
    return float(int(time.time()) - hours_ago * 3600)


def _event(type_: str, job_id: str, ts: float, host: str = WORKER, **fields: Any) -> dict[str, Any]:
    """One raw task event as Celery sends it."""
    return {"type": type_, "uuid": job_id, "timestamp": ts, "hostname": host, "pid": 7,
            "clock": next(_clock), "utcoffset": 0, **fields}  # fmt: skip


def _kwargs(user: str | None, doc_type: str | None, priority: str) -> str:
    """The kwargs repr of a document task."""
    kwargs: dict[str, Any] = {"document_id": "doc-1", "document_name": "file", "priority": priority}
    if user is not None:
        kwargs["user_id"] = user
    if doc_type is not None:
        kwargs["document_type"] = doc_type
    return repr(kwargs)


def job_events(
    job_id: str,
    at: float,
    *,
    wait: float | None = None,
    run: float = 0.0,
    outcome: str | None = None,
    percentage: int | None = None,
    user: str | None = "alice",
    doc_type: str | None = "pdf",
    task: str = "examples.ingest.extract",
    priority: str = "NORMAL",
    exception: str = "ValueError('bad file')",
) -> list[dict[str, Any]]:
    """Events of one job: sent at `at`, started `wait` s later, ended `run` s after that."""
    events = [_event("task-sent", job_id, at, PRODUCER, name=task, args="()", queue="celery",
                     kwargs=_kwargs(user, doc_type, priority), retries=0)]  # fmt: skip
    begun = at + (wait or 0.0)
    if wait is not None:
        events.append(_event("task-started", job_id, begun))
    if percentage is not None:
        events.append(_event("task-progress", job_id, begun + run / 2, percentage=percentage,
                             message=f"at {percentage}%"))  # fmt: skip
    end = begun + run
    if outcome == "succeeded":
        events.append(_event("task-succeeded", job_id, end, result="'ok'", runtime=run))
    elif outcome == "failed":
        events.append(_event("task-failed", job_id, end, exception=exception,
                             traceback="Traceback (most recent call last):\n  boom"))  # fmt: skip
    elif outcome == "revoked":
        events.append(_event("task-revoked", job_id, end, terminated=True, signum=15,
                             expired=False))  # fmt: skip
    return events


def write(engine: sa.Engine, events: list[dict[str, Any]]) -> None:
    """Apply events in one batch, the way the listener's writer does."""
    batch = batch_for(events)
    store.apply_batch(engine, batch.sorted_jobs(), batch.history.values())


def add_job(engine: sa.Engine, at: float, job_id: str | None = None, **spec: Any) -> str:
    """Write one job's events; return its id."""
    job_id = job_id or new_id()
    write(engine, job_events(job_id, at, **spec))
    return job_id


def event(type_: str, job_id: str, ts: float, **fields: Any) -> dict[str, Any]:
    """One more raw event for a job (progress, outcome) written later in a test."""
    return _event(type_, job_id, ts, **fields)
