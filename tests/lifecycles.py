"""Realistic Celery task lifecycles as lists of raw event dicts (what workers really send)."""

from __future__ import annotations

import itertools
import uuid as uuidlib
from typing import Any

from tracker.batch import Batch
from tracker.changes import JobChange
from tracker.events import Event, parse_event
from tracker.mapping import MappingContext, map_event

WORKER = "celery@worker-1"
PRODUCER = "gen42@web-1"
KWARGS = (
    "{'document_id': 'doc-1', 'document_name': 'report.pdf', 'document_type': 'pdf', "
    "'user_id': 'alice', 'priority': 'high', 'metadata': {'source': 's3'}}"
)
_clock = itertools.count(1)


class Lifecycle:
    """Builds the events of one task, with increasing timestamps."""

    def __init__(self, task_id: str | None = None, start: float = 1_764_000_000.0,
                 name: str = "examples.ingest.extract", kwargs: str = KWARGS) -> None:  # fmt: skip
        self.id = task_id or str(uuidlib.uuid4())
        self.t = start
        self.name = name
        self.kwargs = kwargs
        self.events: list[dict[str, Any]] = []

    def _event(self, type_: str, host: str = WORKER, step: float = 0.01,
               **fields: Any) -> Lifecycle:  # fmt: skip
        self.t += step
        envelope = {"type": type_, "uuid": self.id, "timestamp": self.t, "hostname": host,
                    "pid": 100, "clock": next(_clock), "utcoffset": 0}  # fmt: skip
        self.events.append({**envelope, **fields})
        return self

    def sent(self, retries: int = 0, queue: str = "celery") -> Lifecycle:
        """task-sent, from the producer (task_send_sent_event)."""
        return self._event("task-sent", host=PRODUCER, name=self.name, args="()",
                           kwargs=self.kwargs, retries=retries, eta=None, expires=None,
                           root_id=self.id, parent_id=None, queue=queue, exchange="",
                           routing_key=queue)  # fmt: skip

    def received(self, retries: int = 0) -> Lifecycle:
        """task-received, from the worker's main process."""
        return self._event("task-received", name=self.name, args="()", kwargs=self.kwargs,
                           retries=retries, eta=None, expires=None, root_id=self.id,
                           parent_id=None)  # fmt: skip

    def started(self) -> Lifecycle:
        """task-started."""
        return self._event("task-started")

    def progress(self, percentage: Any, message: str = "working", **extra: Any) -> Lifecycle:
        """task-progress, as `self.send_event('task-progress', ...)` sends it."""
        return self._event("task-progress", percentage=percentage, message=message, **extra)

    def succeeded(self, result: str = "'ok'", runtime: float = 1.5) -> Lifecycle:
        """task-succeeded."""
        return self._event("task-succeeded", result=result, runtime=runtime)

    def failed(self, exception: str = "ValueError('bad file')",
               traceback: str = "Traceback (most recent call last):\n") -> Lifecycle:  # fmt: skip
        """task-failed."""
        return self._event("task-failed", exception=exception, traceback=traceback)

    def retried(self, exception: str = "ConnectionError('timeout')") -> Lifecycle:
        """task-retried (no retries field, as in Celery)."""
        return self._event("task-retried", exception=exception, traceback="Traceback ...")

    def revoked(self, terminated: bool = False, expired: bool = False) -> Lifecycle:
        """task-revoked."""
        return self._event("task-revoked", terminated=terminated,
                           signum=15 if terminated else None, expired=expired)  # fmt: skip

    def rejected(self, requeue: bool = False) -> Lifecycle:
        """task-rejected."""
        return self._event("task-rejected", requeue=requeue)

    def custom(self, type_: str = "task-checkpoint", **fields: Any) -> Lifecycle:
        """A custom task event."""
        return self._event(type_, **fields)


def success(task_id: str | None = None) -> Lifecycle:
    """sent, received, started, two progress events, succeeded."""
    return (Lifecycle(task_id).sent().received().started().progress(30, "chunking", stage="chunk")
            .progress(70, "embedding", stage="embed").succeeded())  # fmt: skip


def failure(task_id: str | None = None) -> Lifecycle:
    """sent, received, started, progress, failed."""
    return Lifecycle(task_id).sent().received().started().progress(40, "parsing").failed()


def retried_then_success(task_id: str | None = None) -> Lifecycle:
    """Celery's real retry order: received(1) arrives before the task-retried it follows."""
    return (Lifecycle(task_id).sent().received().started().progress(20, "fetching")
            .sent(retries=1).received(retries=1).retried().started().progress(60, "again")
            .succeeded())  # fmt: skip


def retries_exhausted(task_id: str | None = None) -> Lifecycle:
    """Two retries, then the final attempt fails (no task-retried for it)."""
    return (Lifecycle(task_id).sent().received().started().sent(retries=1).received(retries=1)
            .retried().started().sent(retries=2).received(retries=2).retried().started()
            .failed("ConnectionError('unavailable')"))  # fmt: skip


def revoked_while_running(task_id: str | None = None) -> Lifecycle:
    """Terminated by `revoke(terminate=True)` mid-run."""
    return (Lifecycle(task_id).sent().received().started().progress(10, "ocr")
            .revoked(terminated=True))  # fmt: skip


def expired(task_id: str | None = None) -> Lifecycle:
    """Expired before a worker ran it."""
    return Lifecycle(task_id).sent().received().revoked(expired=True)


def unregistered(task_id: str | None = None) -> Lifecycle:
    """An unregistered task: a lone task-failed with NotRegistered."""
    return Lifecycle(task_id).failed("NotRegistered('examples.missing')", traceback="")


LIFECYCLES = {
    "success": success,
    "failure": failure,
    "retried_then_success": retried_then_success,
    "retries_exhausted": retries_exhausted,
    "revoked_while_running": revoked_while_running,
    "expired": expired,
    "unregistered": unregistered,
}


def parse_all(
    raw_events: list[dict[str, Any]], received_at: float = 1_764_000_100.0
) -> list[Event]:
    """Validated events of a list of raw dicts (all must be valid)."""
    events = [parse_event(raw, received_at) for raw in raw_events]
    assert all(isinstance(e, Event) for e in events), events
    return [e for e in events if isinstance(e, Event)]


def replay(raw_events: list[dict[str, Any]], ctx: MappingContext | None = None) -> JobChange:
    """The merged change of one job's events, in the given order (pure)."""
    batch = batch_for(raw_events, ctx)
    assert len(batch.jobs) == 1
    return next(iter(batch.jobs.values()))


def batch_for(raw_events: list[dict[str, Any]], ctx: MappingContext | None = None) -> Batch:
    """A writer batch holding these events, mapped."""
    batch = Batch()
    for event in parse_all(raw_events):
        batch.add(event, map_event(event, ctx or MappingContext()), 0.0)
    return batch
