"""Order-insensitive, idempotent merge: property tests in Python and against PostgreSQL."""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import lifecycles as lc
from tests.helpers import fetch_all, scalar, wait_for
from tracker import store
from tracker.batch import Batch
from tracker.changes import JobChange
from tracker.mapping import MappingContext, map_event

LIFECYCLE_NAMES = sorted(lc.LIFECYCLES)


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A realistic lifecycle, and a permutation of it in which some events repeat."""
    name = draw(st.sampled_from(LIFECYCLE_NAMES))
    events = lc.LIFECYCLES[name]().events
    dupes = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    shuffled = draw(st.permutations(events + dupes))
    return events, shuffled


def comparable(change: JobChange) -> dict[str, Any]:
    """Everything a change says, as plain data."""
    return store.job_row(change) | {"retried": sorted(change.retried)}


@given(shuffled_with_duplicates())
@settings(max_examples=300, deadline=None)
def test_fold_is_a_function_of_the_event_set(case: tuple[list[Any], list[Any]]) -> None:
    original, shuffled = case
    assert comparable(lc.replay(shuffled)) == comparable(lc.replay(original))


# ---------------------------------------------------------------- against PostgreSQL

ROW_SQL = """
SELECT id, task_name, status, priority, percentage, summary, document_id, document_name,
       document_type, user_id, queue, worker, retries, args, kwargs, result, error_details,
       metadata, estimated_duration, parent_id, root_id, start_date, started_at, end_date,
       duration_seconds
FROM jobs WHERE id = :id
"""


def _ts(value: float | None) -> datetime | None:
    """An epoch timestamp as PostgreSQL returns it (microsecond precision)."""
    return None if value is None else datetime.fromtimestamp(round(value, 6), UTC)


def expected_row(change: JobChange) -> dict[str, Any]:
    """The jobs row the merge must produce for a folded change."""
    status, end_ts = change.status[1] if change.status else ("PENDING", None)
    end = _ts(end_ts)
    start = _ts(change.start_ts)
    return {
        "id": change.id, "task_name": change.task_name, "status": status,
        "priority": change.priority.value if change.priority else "NORMAL",
        "percentage": change.percentage[1] if change.percentage else 0,
        "summary": change.summary[1] if change.summary else None,
        "document_id": change.document_id, "document_name": change.document_name,
        "document_type": change.document_type, "user_id": change.user_id,
        "queue": change.queue, "worker": change.worker[1] if change.worker else None,
        "retries": change.retries, "args": change.args, "kwargs": change.kwargs,
        "result": change.result, "error_details": change.error_details,
        "metadata": {k: v[1] for k, v in change.metadata.items()},
        "estimated_duration": change.estimated_duration, "parent_id": change.parent_id,
        "root_id": change.root_id, "start_date": start, "started_at": _ts(change.started_ts),
        "end_date": end,
        "duration_seconds": (end - start).total_seconds() if end and start else None,
    }  # fmt: skip


def stored_row(engine: sa.Engine, job_id: str) -> dict[str, Any]:
    """The jobs row as stored."""
    rows = fetch_all(engine, ROW_SQL, id=job_id)
    assert len(rows) == 1
    row = rows[0]
    if row["duration_seconds"] is not None:
        row["duration_seconds"] = pytest.approx(row["duration_seconds"], abs=2e-6)
    return row


def write(engine: sa.Engine, raw_events: list[dict[str, Any]]) -> None:
    """Write events the way the writer does: mapped, coalesced, one batch."""
    batch = lc.batch_for(raw_events)
    store.apply_batch(engine, batch.sorted_jobs(), batch.history.values())


@st.composite
def split_shuffled(draw: st.DrawFn) -> tuple[list[Any], list[list[Any]]]:
    """A lifecycle and its shuffled, duplicated events split into several batches."""
    original, shuffled = draw(shuffled_with_duplicates())
    cuts = sorted(draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    bounds = [0, *cuts, len(shuffled)]
    batches = [shuffled[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return original, batches


@given(split_shuffled())
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_sql_merge_equals_the_fold_in_any_order_and_batching(
    engine: sa.Engine, case: tuple[list[Any], list[list[Any]]]
) -> None:
    original, batches = case
    job_id = str(uuid.uuid4())
    original = [dict(e, uuid=job_id) for e in original]
    for batch in batches:
        write(engine, [dict(e, uuid=job_id) for e in batch])
    assert stored_row(engine, job_id) == expected_row(lc.replay(original))
    history = scalar(engine, "SELECT count(*) FROM job_events WHERE job_id = :id", id=job_id)
    assert history == len(original)


def test_replaying_everything_twice_changes_nothing(engine: sa.Engine) -> None:
    life = lc.retried_then_success()
    write(engine, life.events)
    before = stored_row(engine, life.id)
    updated = scalar(engine, "SELECT updated_at FROM jobs WHERE id = :id", id=life.id)
    write(engine, life.events)
    write(engine, list(reversed(life.events)))
    assert stored_row(engine, life.id) == before
    assert scalar(engine, "SELECT updated_at FROM jobs WHERE id = :id", id=life.id) >= updated
    assert scalar(engine, "SELECT count(*) FROM job_events") == len(life.events)


def test_history_rows_carry_event_fields(engine: sa.Engine) -> None:
    life = lc.failure()
    write(engine, life.events)
    rows = fetch_all(engine, "SELECT * FROM job_events WHERE job_id = :id ORDER BY occurred_at",
                     id=life.id)  # fmt: skip
    assert [r["event_type"] for r in rows] == [e["type"] for e in life.events]
    failed = rows[-1]
    assert failed["status"] == "FAILED"
    assert failed["details"]["exception"] == "ValueError('bad file')"
    assert failed["occurred_at"] == _ts(life.events[-1]["timestamp"])
    assert rows[3]["percentage"] == 40 and rows[3]["message"] == "parsing"


def test_every_commit_notifies_job_updates(engine: sa.Engine, db_url: str) -> None:
    import orjson
    import psycopg2

    listener = psycopg2.connect(store.driver_url(db_url).render_as_string(False).replace(
        "postgresql+psycopg2", "postgresql"))  # fmt: skip
    listener.autocommit = True
    listener.cursor().execute("LISTEN job_updates")
    life = lc.success()
    write(engine, life.events)
    # Delivered after the commit, asynchronously: over TCP it may not have arrived yet.
    wait_for(lambda: listener.poll() or listener.notifies, 10, what="a job_updates notification")
    payloads = [orjson.loads(n.payload) for n in listener.notifies]
    listener.close()
    assert payloads == [{"id": life.id, "status": "FINISHED", "percentage": 100,
                         "summary": "Finished in 1.50 s", "user_id": "alice",
                         "task_name": "examples.ingest.extract"}]  # fmt: skip


def test_two_concurrent_writers_leave_the_rows_one_would(engine: sa.Engine) -> None:
    lives = [lc.LIFECYCLES[name]() for name in LIFECYCLE_NAMES for _ in range(6)]
    events = [e for life in lives for e in life.events]
    errors: list[BaseException] = []

    def writer(order: list[dict[str, Any]]) -> None:
        try:
            for i in range(0, len(order), 25):
                write_retrying(engine, order[i : i + 25])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(events,)),
               threading.Thread(target=writer, args=(list(reversed(events)),))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for life in lives:
        assert stored_row(engine, life.id) == expected_row(lc.replay(life.events))
    assert scalar(engine, "SELECT count(*) FROM job_events") == len(events)


def write_retrying(engine: sa.Engine, raw_events: list[dict[str, Any]]) -> None:
    """Write a batch, retrying transient errors as the writer does."""
    for _ in range(20):
        try:
            write(engine, raw_events)
            return
        except store.TransientStoreError:
            continue
    raise AssertionError("batch never committed")


def test_retries_count_distinct_retried_events_across_batches(engine: sa.Engine) -> None:
    life = lc.retries_exhausted()
    for event in reversed(life.events):
        write(engine, [event])
    assert scalar(engine, "SELECT retries FROM jobs WHERE id = :id", id=life.id) == 2


def test_batch_coalesces_events_of_one_job(engine: sa.Engine) -> None:
    batch = Batch()
    for event in lc.parse_all(lc.success().events * 2):
        batch.add(event, map_event(event, MappingContext()), 0.0)
    assert len(batch.jobs) == 1 and batch.size == 12 and len(batch.history) == 6
