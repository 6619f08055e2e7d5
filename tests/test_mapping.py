"""The pure event -> job mapping, tested by replaying event lists (no broker, no database)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import lifecycles as lc
from tracker.events import Event, decode_message, parse_event
from tracker.mapping import SUMMARY_CAP, TEXT_CAP, MappingContext, map_event
from tracker.status import JobPriority


def status_of(change: Any) -> str:
    """The status a change ends in."""
    return str(change.status[1][0])


def value(register: Any) -> Any:
    """The value held by a register."""
    return register[1] if register is not None else None


def test_success_lifecycle() -> None:
    change = lc.replay(lc.success("job-1").events)
    assert status_of(change) == "FINISHED"
    assert value(change.percentage) == 100
    assert value(change.summary) == "Finished in 1.50 s"
    assert value(change.worker) == lc.WORKER
    assert change.task_name == "examples.ingest.extract"
    assert change.queue == "celery"
    assert change.status is not None
    assert change.status[1][1] is not None  # end timestamp set
    assert change.started_ts is not None and change.started_ts > change.start_ts


def test_document_fields_come_from_kwargs_repr() -> None:
    change = lc.replay(lc.success().events)
    assert (change.document_id, change.document_name, change.document_type, change.user_id) == (
        "doc-1", "report.pdf", "pdf", "alice")  # fmt: skip
    assert change.priority is JobPriority.HIGH
    assert {k: v[1] for k, v in change.metadata.items()} == {"source": "s3", "stage": "embed"}


def test_progress_sets_processing_percentage_and_summary() -> None:
    events = lc.Lifecycle().sent().received().started().progress(42.7, "chunking").events
    change = lc.replay(events)
    assert status_of(change) == "PROCESSING"
    assert value(change.percentage) == 42
    assert value(change.summary) == "chunking"


@pytest.mark.parametrize(("given", "stored"), [(-5, 0), (250, 100), (100, 100), (0, 0)])
def test_progress_percentage_is_clamped(given: int, stored: int) -> None:
    change = lc.replay(lc.Lifecycle().started().progress(given).events)
    assert value(change.percentage) == stored


@pytest.mark.parametrize("bad", ["fifty", None, True, float("nan"), [1]])
def test_progress_with_bad_percentage_keeps_message(bad: Any) -> None:
    change = lc.replay(lc.Lifecycle().started().progress(bad, "still here").events)
    assert change.percentage is None
    assert value(change.summary) == "still here"


def test_progress_event_can_carry_document_fields() -> None:
    events = lc.Lifecycle(kwargs="{}").started().progress(
        10, "x", document_id=7, user_id="bob", document_type="docx", priority="urgent",
        estimated_duration=12.5).events  # fmt: skip
    change = lc.replay(events)
    assert (change.document_id, change.user_id, change.document_type) == ("7", "bob", "docx")
    assert change.priority is JobPriority.URGENT
    assert change.estimated_duration == 12
    assert "document_id" not in change.metadata


def test_failure_keeps_exception_and_traceback() -> None:
    change = lc.replay(lc.failure().events)
    assert status_of(change) == "FAILED"
    assert value(change.summary) == "Failed: ValueError('bad file')"
    assert change.error_details is not None
    assert change.error_details.startswith("ValueError('bad file')\nTraceback")
    assert value(change.percentage) == 40  # the last progress stays visible


def test_retries_then_success_counts_retries() -> None:
    change = lc.replay(lc.retried_then_success().events)
    assert status_of(change) == "FINISHED"
    assert change.retries == 1


def test_retries_exhausted_fails_with_retry_count() -> None:
    change = lc.replay(lc.retries_exhausted().events)
    assert status_of(change) == "FAILED"
    assert change.retries == 2
    assert value(change.summary) == "Failed: ConnectionError('unavailable')"


def test_retried_resets_percentage_and_says_retrying() -> None:
    events = lc.Lifecycle().sent().received().started().progress(80).retried().events
    change = lc.replay(events)
    assert status_of(change) == "PENDING"
    assert value(change.percentage) == 0
    assert value(change.summary) == "Retrying: ConnectionError('timeout')"
    assert change.retries == 1


def test_retried_without_received_counts_itself() -> None:
    events = lc.Lifecycle().started().retried().started().retried("E2").events
    assert lc.replay(events).retries == 2


@pytest.mark.parametrize(
    ("builder", "summary"),
    [
        (lambda: lc.revoked_while_running(), "Terminated (signal 15)"),
        (lambda: lc.expired(), "Expired before it ran"),
        (lambda: lc.Lifecycle().sent().revoked(), "Revoked"),
    ],
)
def test_revoked_is_cancelled_with_reason(builder: Any, summary: str) -> None:
    change = lc.replay(builder().events)
    assert status_of(change) == "CANCELLED"
    assert value(change.summary) == summary
    assert change.status is not None
    assert change.status[1][1] is not None


def test_rejected_fails_unless_requeued() -> None:
    assert status_of(lc.replay(lc.Lifecycle().received().rejected().events)) == "FAILED"
    requeued = lc.replay(lc.Lifecycle().received().rejected(requeue=True).events)
    assert status_of(requeued) == "PENDING"
    assert value(requeued.summary) == "Rejected and requeued"


def test_unregistered_task_creates_failed_job() -> None:
    change = lc.replay(lc.unregistered().events)
    assert status_of(change) == "FAILED"
    assert change.task_name is None
    assert change.error_details == "NotRegistered('examples.missing')"


def test_remote_queue_waits_for_remote_worker() -> None:
    ctx = MappingContext(remote_queues=frozenset({"gpu"}))
    waiting = lc.replay(lc.Lifecycle().sent(queue="gpu").events, ctx)
    assert status_of(waiting) == "WAITING_FOR_REMOTE_WORKER"
    received = lc.replay(lc.Lifecycle().sent(queue="gpu").received().events, ctx)
    assert status_of(received) == "PENDING"
    local = lc.replay(lc.Lifecycle().sent(queue="celery").events, ctx)
    assert status_of(local) == "PENDING"


def test_terminal_state_is_sticky_against_late_events() -> None:
    life = lc.success()
    late = lc.Lifecycle(life.id, start=life.t + 5).started().progress(10).retried().received()
    change = lc.replay(life.events + late.events)
    assert status_of(change) == "FINISHED"
    assert value(change.percentage) == 100
    assert value(change.summary) == "Finished in 1.50 s"


def test_finished_beats_failed_beats_cancelled_whatever_the_timestamps() -> None:
    life = lc.Lifecycle().started().succeeded()
    life.failed()
    life.revoked()
    assert status_of(lc.replay(life.events)) == "FINISHED"
    other = lc.Lifecycle().started().failed()
    other.revoked()
    assert status_of(lc.replay(list(reversed(other.events)))) == "FAILED"


def test_latest_timestamp_decides_before_terminal() -> None:
    life = lc.Lifecycle().sent().received().started().progress(50)
    assert status_of(lc.replay(list(reversed(life.events)))) == "PROCESSING"


def test_custom_event_goes_to_history_and_metadata_only() -> None:
    life = lc.Lifecycle().started().custom("task-checkpoint", shard=3, note="half way")
    change = lc.replay(life.events)
    assert status_of(change) == "PROCESSING"
    assert {k: v[1] for k, v in change.metadata.items()} == {"shard": 3, "note": "half way"}
    mapped = map_event(lc.parse_all(life.events[-1:])[0], MappingContext())
    assert mapped.history.event_type == "task-checkpoint"
    assert mapped.history.status is None
    assert mapped.history.details == {"shard": 3, "note": "half way"}


def test_truncated_kwargs_keep_raw_text_and_leave_fields_empty() -> None:
    truncated = "{'document_id': 'doc-1', 'document_name': 'a very long na..."
    change = lc.replay(lc.Lifecycle(kwargs=truncated).sent().events)
    assert change.kwargs == truncated
    assert change.document_id is None and change.priority is None


def test_non_literal_kwargs_are_never_evaluated() -> None:
    hostile = "{'document_id': __import__('os').system('touch /tmp/pwned')}"
    change = lc.replay(lc.Lifecycle(kwargs=hostile).sent().events)
    assert change.kwargs == hostile
    assert change.document_id is None


def test_huge_fields_are_capped() -> None:
    huge = "x" * (TEXT_CAP + 5000)
    life = lc.Lifecycle(kwargs=huge).sent().started().progress(5, "m" * 5000).failed(
        exception="E", traceback=huge)  # fmt: skip
    change = lc.replay(life.events)
    assert change.kwargs is not None and len(change.kwargs) < TEXT_CAP + 100
    assert change.kwargs.endswith("[truncated 5000 chars]")
    assert change.error_details is not None and len(change.error_details) < TEXT_CAP + 100
    assert value(change.summary) is not None and len(value(change.summary)) <= SUMMARY_CAP + 100


def test_history_row_fields() -> None:
    raw = lc.failure("job-9").events[-1]
    mapped = map_event(lc.parse_all([raw])[0], MappingContext())
    history = mapped.history
    assert (history.job_id, history.event_type, history.status) == (
        "job-9",
        "task-failed",
        "FAILED",
    )
    assert history.occurred_ts == raw["timestamp"]
    assert history.hostname == lc.WORKER
    assert history.details["exception"] == "ValueError('bad file')"


def test_decode_prefork_batched_list_body() -> None:
    import orjson

    life = lc.success()
    decoded = decode_message(orjson.dumps(life.events), received_at=1.0)
    assert [e.type for e in decoded.events] == [e["type"] for e in life.events]
    assert decoded.errors == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json{", "body is not JSON"),
        (b"42", "event is not an object"),
        (b'{"uuid": "x"}', "event has no type"),
        (b'{"type": "task-started"}', "task-started event has no uuid"),
        (b'{"type": "task-started", "uuid": 5}', "task-started event has no uuid"),
    ],
)
def test_decode_reports_bad_messages(body: bytes, reason: str) -> None:
    decoded = decode_message(body, received_at=1.0)
    assert decoded.events == []
    assert decoded.errors and decoded.errors[0].startswith(reason)


def test_decode_keeps_valid_events_of_a_mixed_list() -> None:
    good = lc.success().events[0]
    decoded = decode_message([good, "junk", {"type": 3}], received_at=1.0)
    assert len(decoded.events) == 1 and len(decoded.errors) == 2


def test_bad_timestamp_falls_back_to_receive_time() -> None:
    event = parse_event({"type": "task-started", "uuid": "a", "timestamp": "yesterday"}, 123.0)
    assert isinstance(event, Event) and event.timestamp == 123.0


def test_nul_characters_and_lone_surrogates_are_cleaned() -> None:
    body = b'{"type": "task-progress", "uuid": "a", "message": "a\\u0000b\\ud800c"}'
    decoded = decode_message(body, received_at=1.0)
    assert decoded.events[0].fields["message"] == "ab?c"


def test_duplicate_events_have_the_same_key_and_receiver_fields_do_not_count() -> None:
    raw = lc.success().events[2]
    first = parse_event(dict(raw, local_received=1.0), 1.0)
    second = parse_event(dict(raw, local_received=2.0), 2.0)
    assert isinstance(first, Event) and isinstance(second, Event)
    assert first.key == second.key
