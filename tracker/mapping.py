"""From a Celery task event to a job change and a history row (pure, no I/O).

The table `RULES` says what each event type does to a job; the small functions
below it derive the values. Unknown `task-*` events are recorded in the history
and their fields merged into metadata, without touching the status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tracker.changes import JobChange, order_key
from tracker.events import Event
from tracker.reprs import DOCUMENT_FIELDS, DocumentFields, document_fields, literal_kwargs
from tracker.status import JobStatus, terminal_rank

# Documented caps on stored text (characters); longer values are cut with a marker.
TEXT_CAP = 64 * 1024  # args, kwargs, result, error_details (exception + traceback)
SUMMARY_CAP = 1024  # summary and history message
VALUE_CAP = 4096  # any single string inside metadata or history details

# Fields every event carries (or the receiver adds): never copied into metadata.
ENVELOPE_FIELDS = frozenset(
    {"type", "uuid", "timestamp", "hostname", "utcoffset", "pid", "clock", "local_received"}
)
PROGRESS_FIELDS = frozenset({"percentage", "message", *DOCUMENT_FIELDS})
ORPHANED = "task-orphaned"
# The events Celery puts the task's description in (name, args, kwargs, queue, links).
DESCRIBING_EVENTS = frozenset({"task-sent", "task-received"})
# Event types whose extra fields are merged into the job's metadata.
METADATA_EVENTS = frozenset({"task-progress", ORPHANED})


@dataclass(frozen=True, slots=True)
class MappingContext:
    """Deployment facts the mapping needs."""

    remote_queues: frozenset[str] = frozenset()


@dataclass(slots=True)
class HistoryRow:
    """One row of `job_events`."""

    job_id: str
    event_key: str
    event_type: str
    status: str | None
    percentage: int | None
    message: str | None
    hostname: str | None
    occurred_ts: float
    received_ts: float
    details: dict[str, Any]


@dataclass(slots=True)
class Mapped:
    """The job change and history row one event produces."""

    change: JobChange
    history: HistoryRow


StatusFn = Callable[[Event, MappingContext], JobStatus | None]
TextFn = Callable[[Event], str | None]
PercentFn = Callable[[Event], int | None]


@dataclass(frozen=True, slots=True)
class Rule:
    """What one event type does to a job."""

    precedence: int  # tie-break between events with the same timestamp
    status: StatusFn
    summary: TextFn
    percentage: PercentFn
    from_worker: bool = True  # its hostname is the worker running the task


def _fixed(status: JobStatus) -> StatusFn:
    """A status function that always proposes `status`."""
    return lambda _event, _ctx: status


def _no_status(_event: Event, _ctx: MappingContext) -> JobStatus | None:
    """Proposes no status change."""
    return None


def _sent_status(event: Event, ctx: MappingContext) -> JobStatus:
    """PENDING, or WAITING_FOR_REMOTE_WORKER when the queue is served remotely."""
    queue = event.fields.get("queue") or event.fields.get("routing_key")
    if isinstance(queue, str) and queue in ctx.remote_queues:
        return JobStatus.WAITING_FOR_REMOTE_WORKER
    return JobStatus.PENDING


def _rejected_status(event: Event, _ctx: MappingContext) -> JobStatus:
    """FAILED, unless the worker requeued the message (acks_late), which keeps it pending."""
    return JobStatus.PENDING if event.fields.get("requeue") is True else JobStatus.FAILED


def _none(_event: Event) -> None:
    """No value."""


def _const(value: int) -> PercentFn:
    """A percentage function that always proposes `value`."""
    return lambda _event: value


def _progress_percentage(event: Event) -> int | None:
    """The event's percentage clamped to 0..100, or None when it is not a number."""
    value = event.fields.get("percentage")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return max(0, min(100, int(value)))


def _sent_summary(event: Event) -> str:
    """Where the job was queued."""
    queue = event.fields.get("queue")
    return f"Queued on {queue}" if isinstance(queue, str) and queue else "Queued"


def _host_summary(verb: str) -> TextFn:
    """'<verb> by/on <hostname>'."""
    return lambda event: f"{verb} {event.hostname}" if event.hostname else verb.split()[0]


def _succeeded_summary(event: Event) -> str:
    """Finished, with the runtime when known."""
    runtime = event.fields.get("runtime")
    if isinstance(runtime, int | float) and not isinstance(runtime, bool):
        return f"Finished in {runtime:.2f} s"
    return "Finished"


def _exception_summary(prefix: str) -> TextFn:
    """'<prefix>: <exception>'."""
    return lambda event: f"{prefix}: {_text(event.fields.get('exception')) or 'unknown error'}"


def _revoked_summary(event: Event) -> str:
    """Why the job was cancelled: terminated, expired or revoked."""
    if event.fields.get("expired"):
        return "Expired before it ran"
    if event.fields.get("terminated"):
        signum = event.fields.get("signum")
        return f"Terminated (signal {signum})" if signum else "Terminated"
    return "Revoked"


def _rejected_summary(event: Event) -> str:
    """Rejected by the worker, requeued or not."""
    return "Rejected and requeued" if event.fields.get("requeue") is True else "Rejected"


def _orphan_summary(event: Event) -> str:
    """Why the job may never finish: its worker is gone."""
    worker = _text(event.fields.get("orphaned_worker")) or "its worker"
    return f"Orphaned: {worker} went away while running it; it may be redelivered"


def _progress_summary(event: Event) -> str | None:
    """The progress message."""
    return _text(event.fields.get("message"))


RULES: dict[str, Rule] = {
    "task-sent": Rule(1, _sent_status, _sent_summary, _none, from_worker=False),
    "task-received": Rule(2, _fixed(JobStatus.PENDING), _host_summary("Received by"), _none),
    "task-retried": Rule(3, _fixed(JobStatus.PENDING), _exception_summary("Retrying"), _const(0)),
    "task-started": Rule(4, _fixed(JobStatus.PROCESSING), _host_summary("Started on"), _none),
    "task-progress": Rule(5, _fixed(JobStatus.PROCESSING), _progress_summary, _progress_percentage),
    "task-rejected": Rule(6, _rejected_status, _rejected_summary, _none),
    "task-revoked": Rule(7, _fixed(JobStatus.CANCELLED), _revoked_summary, _none),
    "task-failed": Rule(8, _fixed(JobStatus.FAILED), _exception_summary("Failed"), _none),
    "task-succeeded": Rule(9, _fixed(JobStatus.FINISHED), _succeeded_summary, _const(100)),
    # Synthesised by job-tracker itself when a worker goes away mid-task (not terminal).
    ORPHANED: Rule(0, _no_status, _orphan_summary, _none, from_worker=False),
}
# Unknown task-* events: history and metadata only.
CUSTOM_RULE = Rule(0, _no_status, _none, _none)

# Fields an event type carries that are not copied into metadata (they have columns).
KNOWN_FIELDS: dict[str, frozenset[str]] = {
    "task-sent": frozenset({"name", "args", "kwargs", "retries", "eta", "expires", "root_id",
                            "parent_id", "queue", "exchange", "routing_key"}),
    "task-received": frozenset({"name", "args", "kwargs", "retries", "eta", "expires",
                                "root_id", "parent_id"}),
    "task-succeeded": frozenset({"result", "runtime"}),
    "task-failed": frozenset({"exception", "traceback"}),
    "task-retried": frozenset({"exception", "traceback"}),
    "task-revoked": frozenset({"terminated", "signum", "expired"}),
    "task-rejected": frozenset({"requeue"}),
    "task-progress": PROGRESS_FIELDS,
}  # fmt: skip


# Per event type, the known fields kept in the history row's details (in a stable order).
DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    event_type: tuple(sorted(known - {"args", "kwargs", "name", "percentage", "message",
                                      *DOCUMENT_FIELDS}))
    for event_type, known in KNOWN_FIELDS.items()
}  # fmt: skip


def map_event(event: Event, ctx: MappingContext) -> Mapped:
    """The job change and history row for one task event (event.uuid must be set)."""
    assert event.uuid is not None
    rule = RULES.get(event.type, CUSTOM_RULE)
    status = rule.status(event, ctx)
    rank = terminal_rank(status)
    key = order_key(rank, event.timestamp, rule.precedence, event.key)
    # Worker and metadata are last-writer-wins by time alone, terminal or not.
    stamp = key if rank == 0 else order_key(0, event.timestamp, rule.precedence, event.key)
    percentage = rule.percentage(event)
    summary = _cap(rule.summary(event), SUMMARY_CAP)
    change = JobChange(id=event.uuid, start_ts=event.timestamp)
    _fill_registers(change, event, rule, key, stamp, status, percentage, summary)
    if event.type in DESCRIBING_EVENTS:
        _fill_description(change, event)
    elif event.type == "task-succeeded":
        change.result = _cap(_text(event.fields.get("result")), TEXT_CAP)
    elif event.type == "task-failed":
        change.error_details = _cap(_error_details(event), TEXT_CAP)
    doc = document_fields(
        event.fields
        if event.type == "task-progress"
        else literal_kwargs(event.fields.get("kwargs"))
    )
    _apply_document(change, doc)
    extras = _extras(event)
    meta = _metadata_of(event, doc, extras)
    change.metadata.update({k: (stamp, v) for k, v in meta.items()})
    history = _history(event, status, percentage, summary, extras)
    return Mapped(change=change, history=history)


def _fill_registers(
    change: JobChange,
    event: Event,
    rule: Rule,
    key: str,
    stamp: str,
    status: JobStatus | None,
    percentage: int | None,
    summary: str | None,
) -> None:
    """Set the last-writer-wins fields this event proposes."""
    if status is not None:
        end_ts = event.timestamp if terminal_rank(status) else None
        change.status = (key, (status.value, end_ts))
    if percentage is not None:
        change.percentage = (key, percentage)
    if summary is not None:
        change.summary = (key, summary)
    if rule.from_worker and event.hostname:
        change.worker = (stamp, event.hostname)
    if event.type == "task-started":
        change.started_ts = event.timestamp
    if event.type == "task-retried":
        change.retried = frozenset({event.key})
        change.retries = 1


def _fill_description(change: JobChange, event: Event) -> None:
    """Copy what task-sent and task-received describe: name, args, kwargs, queue, links."""
    f = event.fields
    change.task_name = _ident(f.get("name"))
    change.args = _cap(_text(f.get("args")), TEXT_CAP)
    change.kwargs = _cap(_text(f.get("kwargs")), TEXT_CAP)
    change.queue = _ident(f.get("queue"))
    change.parent_id = _ident(f.get("parent_id"))
    change.root_id = _ident(f.get("root_id"))
    retries = f.get("retries")
    if isinstance(retries, int) and not isinstance(retries, bool) and 0 <= retries < 2**31:
        change.retries = max(change.retries, retries)


def _apply_document(change: JobChange, doc: DocumentFields) -> None:
    """Copy document fields found in kwargs or a progress event."""
    change.document_id = doc.document_id
    change.document_name = doc.document_name
    change.document_type = doc.document_type
    change.user_id = doc.user_id
    change.priority = doc.priority
    change.estimated_duration = doc.estimated_duration


def _metadata_of(event: Event, doc: DocumentFields, extras: dict[str, Any]) -> dict[str, Any]:
    """Metadata this event contributes: kwargs' `metadata` dict plus progress/custom extras."""
    meta = dict(doc.metadata)
    if event.type in METADATA_EVENTS or event.type not in RULES:
        meta.update(extras)
    return {k[:255]: _cap_value(v) for k, v in meta.items()}


def _extras(event: Event) -> dict[str, Any]:
    """Fields of the event beyond the envelope and those with their own columns."""
    known = KNOWN_FIELDS.get(event.type, frozenset())
    return {k: v for k, v in event.fields.items() if k not in ENVELOPE_FIELDS and k not in known}


def _history(
    event: Event,
    status: JobStatus | None,
    percentage: int | None,
    summary: str | None,
    extras: dict[str, Any],
) -> HistoryRow:
    """The history row of an event."""
    details = {k: _cap_value(v) for k, v in _details_of(event).items()}
    details.update({k[:255]: _cap_value(v) for k, v in extras.items()})
    return HistoryRow(
        job_id=event.uuid or "",
        event_key=event.key,
        event_type=event.type,
        status=status.value if status is not None else None,
        percentage=percentage,
        message=summary,
        hostname=event.hostname,
        occurred_ts=event.timestamp,
        received_ts=event.received_at,
        details=details,
    )


def _details_of(event: Event) -> dict[str, Any]:
    """The event's own fields worth keeping in history (exception, result, runtime...)."""
    fields = event.fields
    return {k: fields[k] for k in DETAIL_FIELDS.get(event.type, ()) if k in fields}


def _error_details(event: Event) -> str | None:
    """Exception and traceback of a failure, as one text."""
    exception = _text(event.fields.get("exception"))
    traceback = _text(event.fields.get("traceback"))
    parts = [p for p in (exception, traceback) if p]
    return "\n".join(parts) if parts else None


def _text(value: Any) -> str | None:
    """A string value, or None (non-strings are not guessed at)."""
    return value if isinstance(value, str) and value else None


def _ident(value: Any) -> str | None:
    """A short identifier-like string (task name, queue, ids), capped at 255 characters."""
    return value[:255] if isinstance(value, str) and value else None


def _cap(value: str | None, limit: int) -> str | None:
    """Cut a text at `limit` characters, saying how much was cut."""
    if value is None or len(value) <= limit:
        return value
    return f"{value[:limit]}... [truncated {len(value) - limit} chars]"


def _cap_value(value: Any, depth: int = 0) -> Any:
    """Cap every string inside a JSON-like value, and its nesting depth."""
    if isinstance(value, str):
        return _cap(value, VALUE_CAP)
    if depth > 8:
        return _cap(repr(value), VALUE_CAP)
    if isinstance(value, Mapping):
        return {str(k)[:255]: _cap_value(v, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, list | tuple):
        return [_cap_value(v, depth + 1) for v in list(value)[:200]]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value
