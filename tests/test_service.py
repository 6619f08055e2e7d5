"""JobService against real PostgreSQL, on jobs written exactly as the listener writes them."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy as sa
from celery import Celery
from click.testing import CliRunner
from pydantic import ValidationError

from tests.helpers import (
    celery_worker,
    fetch_all,
    job_tracker,
    running,
    scalar,
    wait_consuming,
    wait_for,
)
from tests.jobfactory import add_job, event, hour_base, write
from tracker.cli import main
from tracker.models import DurationStats, FailureCount, JobSearchRequest
from tracker.service import (
    InvalidRequest,
    JobNotCancellable,
    JobNotFound,
    JobService,
    RevokeFailed,
    ServiceError,
    WatchTimeout,
)
from tracker.store import StoreError

DAY = 86400.0
OCR = "examples.ingest.ocr"


class FakeControl:
    """Records revokes (or fails like an unreachable broker); can run a hook first."""

    def __init__(self, error: Exception | None = None, hook: Any = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.error = error
        self.hook = hook

    def revoke(self, task_id: str, **options: Any) -> None:
        """Celery's app.control.revoke."""
        if self.error is not None:
            raise self.error
        self.calls.append((task_id, options))
        if self.hook is not None:
            self.hook()


class FakeApp:
    """Just enough of a Celery app for cancel_job."""

    def __init__(self, error: Exception | None = None, hook: Any = None) -> None:
        self.control = FakeControl(error, hook)


class Notifications:
    """A LISTEN job_updates connection, as a dashboard would hold one."""

    def __init__(self, engine: sa.Engine) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self.conn: psycopg2.extensions.connection = psycopg2.connect(*cargs, **cparams)
        self.conn.autocommit = True
        self.conn.cursor().execute("LISTEN job_updates")
        self.seen: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        """Every payload received so far."""
        self.conn.poll()
        self.seen += [orjson.loads(n.payload) for n in self.conn.notifies]
        self.conn.notifies.clear()
        return self.seen

    def statuses(self, job_id: str) -> list[str]:
        """The job's notified statuses with consecutive repeats collapsed (state changes)."""
        changes: list[str] = []
        for payload in self.drain():
            if payload["id"] == job_id and (not changes or changes[-1] != payload["status"]):
                changes.append(payload["status"])
        return changes


@pytest.fixture
def notifications(engine: sa.Engine) -> Iterator[Notifications]:
    """Notifications of job_updates from now on."""
    listener = Notifications(engine)
    yield listener
    listener.conn.close()


def history(engine: sa.Engine, job_id: str) -> list[dict[str, Any]]:
    """The job's history rows in time order."""
    return fetch_all(engine, "SELECT * FROM job_events WHERE job_id = :id "
                             "ORDER BY occurred_at, id", id=job_id)  # fmt: skip


def has_event(engine: sa.Engine, job_id: str, event_type: str) -> bool:
    """True once the job's history holds an event of this type."""
    return event_type in [h["event_type"] for h in history(engine, job_id)]


def status_of(engine: sa.Engine, job_id: str) -> str | None:
    """The job's stored status."""
    value = scalar(engine, "SELECT status FROM jobs WHERE id = :id", id=job_id)
    return str(value) if value is not None else None


# ---------------------------------------------------------------- statistics


def stats_jobs(engine: sa.Engine, base: float) -> dict[str, str]:
    """Nine jobs in the window and one older, with hand-computed statistics."""
    bob: dict[str, Any] = {"user": "bob"}
    specs: dict[str, dict[str, Any]] = {
        "A": {"at": base, "wait": 2, "run": 10, "outcome": "succeeded"},
        "B": {"at": base + 100, "wait": 4, "run": 20, "outcome": "succeeded"},
        "C": {"at": base + 200, "wait": 1, "run": 5, "outcome": "failed", **bob,
              "doc_type": "docx", "exception": "ValueError('cannot parse c.docx')"},
        "D": {"at": base + 300, "wait": 6, "run": 30, "outcome": "failed", **bob,
              "exception": "ConnectionError('timeout')"},
        "E": {"at": base + 400, "wait": 3, "run": 10, "outcome": "failed", "doc_type": None,
              "task": "examples.ingest.fetch_remote", "exception": "ValueError('bad url')"},
        "F": {"at": base + 500, "wait": 8, "run": 4, "percentage": 40},
        "G": {"at": base + 600, "user": "carol"},
        "H": {"at": base + 700, "run": 10, "outcome": "revoked"},
        "I": {"at": base + 800, "wait": 2, "run": 28, "outcome": "succeeded", **bob,
              "doc_type": "docx"},
        "old": {"at": time.time() - 40 * DAY, "wait": 1, "run": 1, "outcome": "succeeded"},
    }  # fmt: skip
    return {name: add_job(engine, **spec) for name, spec in specs.items()}


def test_statistics_are_exact_over_known_jobs(engine: sa.Engine) -> None:
    base = hour_base(3)
    stats_jobs(engine, base)
    stats = JobService(engine).get_job_statistics(days=30)
    assert stats.total_jobs == 9
    assert stats.jobs_by_status == {"PENDING": 1, "WAITING_FOR_REMOTE_WORKER": 0,
                                    "PROCESSING": 1, "FINISHED": 3, "FAILED": 3,
                                    "CANCELLED": 1}  # fmt: skip
    assert stats.jobs_by_type == {"pdf": 6, "docx": 2, "examples.ingest.fetch_remote": 1}
    # Ended jobs A..E, H, I last 12+24+6+36+13+10+30 = 131 s; 3 of those 7 finished.
    assert stats.average_duration_seconds == pytest.approx(131 / 7)
    assert stats.total_processing_time == 131
    assert stats.success_rate == pytest.approx(3 / 7)
    assert stats.active_jobs == 2
    durations = {kind: d.model_dump() for kind, d in stats.duration_by_type.items()}
    assert durations == {
        "pdf": {"count": 2, "p50_seconds": 18.0, "p95_seconds": pytest.approx(23.4)},
        "docx": {"count": 1, "p50_seconds": 30.0, "p95_seconds": 30.0},
    }
    # Waits of the started jobs: 1, 2, 2, 3, 4, 6, 8.
    assert stats.queue_wait.count == 7
    assert stats.queue_wait.p50_seconds == pytest.approx(3.0)
    assert stats.queue_wait.p95_seconds == pytest.approx(7.4)
    assert stats.top_failures == [
        FailureCount(exception="ValueError", count=2, example="ValueError('bad url')"),
        FailureCount(exception="ConnectionError", count=1, example="ConnectionError('timeout')"),
    ]


def test_jobs_per_hour_cover_every_hour_of_the_window(engine: sa.Engine) -> None:
    base = hour_base(3)
    stats_jobs(engine, base)
    hours = JobService(engine).get_job_statistics(days=2).jobs_per_hour
    assert len(hours) == 2 * 24 + 1
    assert all(b.hour - a.hour == timedelta(hours=1) for a, b in itertools.pairwise(hours))
    sent = [base + offset for offset in range(0, 900, 100)]
    expected = Counter(datetime.fromtimestamp(t, UTC).replace(minute=0, second=0) for t in sent)
    assert {h.hour: h.jobs for h in hours if h.jobs} == expected


def test_statistics_of_one_user(engine: sa.Engine) -> None:
    stats_jobs(engine, hour_base(3))
    stats = JobService(engine).get_job_statistics(user_id="alice")
    assert stats.total_jobs == 5
    assert stats.jobs_by_status["FINISHED"] == 2
    assert stats.jobs_by_status["FAILED"] == 1
    assert stats.total_processing_time == 12 + 24 + 13 + 10
    assert stats.average_duration_seconds == pytest.approx(59 / 4)
    assert stats.success_rate == pytest.approx(0.5)
    assert stats.active_jobs == 1
    assert stats.queue_wait.p50_seconds == pytest.approx(3.5)
    assert stats.queue_wait.p95_seconds == pytest.approx(7.4)
    assert [f.exception for f in stats.top_failures] == ["ValueError"]


def test_statistics_of_an_empty_window(engine: sa.Engine) -> None:
    stats = JobService(engine).get_job_statistics(user_id="nobody", days=1)
    assert (stats.total_jobs, stats.success_rate, stats.average_duration_seconds) == (0, 0.0, 0.0)
    assert stats.queue_wait == DurationStats(count=0, p50_seconds=None, p95_seconds=None)
    assert stats.top_failures == [] and stats.duration_by_type == {}
    with pytest.raises(InvalidRequest, match="days"):
        JobService(engine).get_job_statistics(days=0)


# ---------------------------------------------------------------- search, get, history


def test_search_pages_newest_first_with_totals(engine: sa.Engine) -> None:
    base = hour_base(5)
    alice = [add_job(engine, base + i * 10, wait=1, run=1, outcome="succeeded") for i in range(10)]
    for i in range(3):
        add_job(engine, base + i * 10 + 5, user="bob")
    service = JobService(engine)
    pages = []
    for offset in (0, 3, 6, 9):
        items, total = service.search_jobs(JobSearchRequest(user_id="alice", limit=3,
                                                            offset=offset))  # fmt: skip
        assert total == 10
        pages.append([job.id for job in items])
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [i for page in pages for i in page] == list(reversed(alice))
    assert service.search_jobs(JobSearchRequest(user_id="alice", offset=12)) == ([], 10)
    assert service.search_jobs(JobSearchRequest(user_id="nobody")) == ([], 0)
    assert service.search_jobs()[1] == 13


def test_search_total_is_exact_up_to_the_count_limit(engine: sa.Engine) -> None:
    base = hour_base(5)
    ids = [add_job(engine, base + i * 10, wait=1, run=1, outcome="succeeded") for i in range(7)]
    service = JobService(engine)
    page = service.search_page(JobSearchRequest(limit=2, count_limit=3))
    assert (page.total, page.total_is_capped) == (3, True)
    assert [job.id for job in page.items] == ids[::-1][:2]
    assert service.search_jobs(JobSearchRequest(limit=2, count_limit=3)) == (page.items, 3)
    # Exactly the limit, more than it, no limit at all.
    assert service.search_page(JobSearchRequest(count_limit=7)).total_is_capped is False
    assert service.search_page(JobSearchRequest(count_limit=7)).total == 7
    exact = service.search_page(JobSearchRequest(limit=1, count_limit=None))
    assert (exact.total, exact.total_is_capped, len(exact.items)) == (7, False, 1)
    # The count always reaches the end of the requested page, also past the limit.
    deep = service.search_page(JobSearchRequest(limit=2, offset=4, count_limit=3))
    assert (deep.total, deep.total_is_capped) == (6, True)
    assert [job.id for job in deep.items] == ids[::-1][4:6]
    past = service.search_page(JobSearchRequest(limit=2, offset=9, count_limit=3))
    assert (past.total, past.total_is_capped, past.items) == (7, False, [])
    assert JobSearchRequest().count_limit == 10_000
    with pytest.raises(ValidationError, match="count_limit"):
        JobSearchRequest(count_limit=0)


def test_search_filters(engine: sa.Engine) -> None:
    base = hour_base(5)
    failed = add_job(engine, base, wait=1, run=2, outcome="failed", priority="HIGH")
    docx = add_job(engine, base + 10, doc_type="docx", task="examples.ingest.chunk")
    pending = add_job(engine, base + 20)
    service = JobService(engine)

    def ids(**filters: Any) -> set[str]:
        items, total = service.search_jobs(JobSearchRequest(**filters))
        assert total == len(items)
        return {job.id for job in items}

    assert ids(status="FAILED") == {failed}
    assert ids(priority="HIGH") == {failed}
    assert ids(document_type="docx") == {docx}
    assert ids(task_name="examples.ingest.chunk") == {docx}
    at = datetime.fromtimestamp(base + 10, UTC)
    assert ids(date_from=at) == {docx, pending}
    assert ids(date_to=at) == {failed, docx}
    assert ids(date_from=at, date_to=at) == {docx}
    assert ids(date_from=at.replace(tzinfo=None), status="PENDING") == {docx, pending}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": 1001}, "less than or equal to 1000"),
        ({"limit": 0}, "greater than or equal to 1"),
        ({"offset": -1}, "greater than or equal to 0"),
        ({"status": "DONE"}, "status"),
        ({"date_from": datetime(2025, 2, 1), "date_to": datetime(2025, 1, 1)}, "after"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_search_request_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSearchRequest(**fields)
    assert JobSearchRequest().limit == 50


def test_get_job_and_history(engine: sa.Engine) -> None:
    job_id = add_job(engine, hour_base(1), wait=1, run=4, percentage=50, outcome="succeeded")
    service = JobService(engine)
    job = service.get_job(job_id)
    assert (job.status, job.percentage, job.user_id, job.document_type) == (
        "FINISHED", 100, "alice", "pdf")  # fmt: skip
    assert job.duration_seconds == pytest.approx(5.0)
    assert "merge_status_key" not in job.model_dump()
    events = service.get_history(job_id)
    assert [e.event_type for e in events] == ["task-sent", "task-started", "task-progress",
                                              "task-succeeded"]  # fmt: skip
    assert events[2].percentage == 50
    with pytest.raises(JobNotFound, match="not found"):
        service.get_job("no-such-job")
    with pytest.raises(JobNotFound):
        service.get_history("no-such-job")
    with pytest.raises(InvalidRequest, match="job_id"):
        service.get_job("")


def test_active_jobs(engine: sa.Engine) -> None:
    base = hour_base(1)
    pending = add_job(engine, base)
    running_job = add_job(engine, base + 1, wait=1, percentage=10)
    add_job(engine, base + 2, wait=1, run=1, outcome="succeeded")
    assert [j.id for j in JobService(engine).get_active_jobs()] == [running_job, pending]


def test_user_a_never_sees_user_b(engine: sa.Engine) -> None:
    base = hour_base(1)
    mine = add_job(engine, base, wait=1, percentage=20)
    theirs = add_job(engine, base + 1, wait=1, percentage=30, user="bob")
    app = FakeApp()
    service = JobService(engine, celery_app=app)
    for call in (
        lambda: service.get_job(theirs, "alice"),
        lambda: service.get_history(theirs, "alice"),
        lambda: service.cancel_job(theirs, "alice"),
        lambda: next(service.watch_job(theirs, "alice")),
    ):
        with pytest.raises(JobNotFound):
            call()
    assert app.control.calls == []
    assert [j.id for j in service.search_jobs(JobSearchRequest(user_id="alice"))[0]] == [mine]
    assert [j.id for j in service.get_active_jobs("alice")] == [mine]
    assert service.get_job_statistics("alice").total_jobs == 1
    assert service.get_job(theirs, "bob").user_id == "bob"
    assert status_of(engine, theirs) == "PROCESSING"


# ---------------------------------------------------------------- cancel


def test_cancel_marks_at_once_and_task_revoked_only_confirms(
    engine: sa.Engine, notifications: Notifications
) -> None:
    job_id = add_job(engine, time.time() - 5, wait=1, percentage=30)
    app = FakeApp()
    job = JobService(engine, celery_app=app).cancel_job(job_id, terminate=True)
    assert app.control.calls == [(job_id, {"terminate": True, "signal": "SIGTERM"})]
    assert (job.status, job.summary, job.percentage) == ("CANCELLED", "Cancelled by operator", 30)
    assert job.end_date is not None
    cancel = history(engine, job_id)[-1]
    assert (cancel["event_type"], cancel["status"], cancel["message"]) == (
        "cancel-requested", "CANCELLED", "Cancelled by operator")  # fmt: skip
    assert cancel["event_key"].startswith("cancel-requested-")
    assert cancel["details"] == {"requested_by": "operator", "terminate": True,
                                 "previous_status": "PROCESSING"}  # fmt: skip
    assert notifications.statuses(job_id) == ["PROCESSING", "CANCELLED"]
    # A progress event sent just before the worker got the revoke changes nothing.
    write(engine, [event("task-progress", job_id, time.time(), percentage=60, message="late")])
    assert JobService(engine).get_job(job_id).summary == "Cancelled by operator"
    write(engine, [event("task-revoked", job_id, time.time() + 1, terminated=True, signum=15)])
    assert status_of(engine, job_id) == "CANCELLED"
    # Both later events were notified, and neither changed the state again.
    assert len([p for p in notifications.drain() if p["id"] == job_id]) == 4
    assert notifications.statuses(job_id) == ["PROCESSING", "CANCELLED"]
    types = [h["event_type"] for h in history(engine, job_id)]
    assert types[-3:] == ["cancel-requested", "task-progress", "task-revoked"]


def test_finished_or_failed_event_still_wins_over_a_cancel(engine: sa.Engine) -> None:
    service = JobService(engine, celery_app=FakeApp())
    for outcome, fields, expected in (
        ("task-succeeded", {"result": "'ok'", "runtime": 1.0}, "FINISHED"),
        ("task-failed", {"exception": "ValueError('x')", "traceback": ""}, "FAILED"),
    ):
        job_id = add_job(engine, time.time() - 5, wait=1)
        service.cancel_job(job_id, user_id="alice")
        # The task completed just before the revoke reached the worker: its event is older.
        write(engine, [event(outcome, job_id, time.time() - 1, **fields)])
        job = service.get_job(job_id)
        assert job.status == expected
        assert job.summary != "Cancelled by alice"


def test_cancel_of_a_terminal_job_is_refused(engine: sa.Engine) -> None:
    job_id = add_job(engine, hour_base(1), wait=1, run=1, outcome="succeeded")
    app = FakeApp()
    with pytest.raises(JobNotCancellable, match="already FINISHED"):
        JobService(engine, celery_app=app).cancel_job(job_id)
    assert app.control.calls == []
    assert [h["event_type"] for h in history(engine, job_id)][-1] == "task-succeeded"


def test_cancel_with_an_unreachable_broker_leaves_the_job(engine: sa.Engine) -> None:
    job_id = add_job(engine, hour_base(1), wait=1)
    app = FakeApp(error=ConnectionError("Error 111 connecting to localhost:1"))
    with pytest.raises(RevokeFailed, match="Error 111"):
        JobService(engine, celery_app=app).cancel_job(job_id)
    assert status_of(engine, job_id) == "PROCESSING"
    with pytest.raises(ServiceError, match="Celery app"):
        JobService(engine).cancel_job(job_id)


def test_cancel_racing_the_worker(engine: sa.Engine) -> None:
    """The listener stores task-revoked (or task-succeeded) between the check and the mark."""
    revoked_first = add_job(engine, time.time() - 5, wait=1)
    finished_first = add_job(engine, time.time() - 5, wait=1)

    def store_revoked() -> None:
        write(engine, [event("task-revoked", revoked_first, time.time() + 1, terminated=True,
                             signum=15)])  # fmt: skip

    def store_succeeded() -> None:
        write(engine, [event("task-succeeded", finished_first, time.time(), runtime=1.0)])

    job = JobService(engine, celery_app=FakeApp(hook=store_revoked)).cancel_job(revoked_first)
    assert (job.status, job.summary) == ("CANCELLED", "Terminated (signal 15)")
    types = {h["event_type"] for h in history(engine, revoked_first)}
    assert {"cancel-requested", "task-revoked"} <= types
    service = JobService(engine, celery_app=FakeApp(hook=store_succeeded))
    with pytest.raises(JobNotCancellable, match="became FINISHED"):
        service.cancel_job(finished_first)
    assert "cancel-requested" not in {h["event_type"] for h in history(engine, finished_first)}


# ---------------------------------------------------------------- cleanup


def test_cleanup_deletes_only_old_terminal_jobs_in_batches(engine: sa.Engine) -> None:
    old = time.time() - 100 * DAY
    doomed = [
        add_job(engine, old, wait=1, run=1, outcome="succeeded"),
        add_job(engine, old, wait=1, run=1, outcome="failed"),
        add_job(engine, old, run=1, outcome="revoked"),
    ]
    kept = [
        add_job(engine, time.time() - DAY, wait=1, run=1, outcome="succeeded"),
        add_job(engine, old, wait=1, percentage=5),
        add_job(engine, old),
    ]
    service = JobService(engine)
    assert service.count_old_jobs(days=90) == 3
    assert service.cleanup_old_jobs(days=90, statuses=["FAILED"]) == 1
    assert service.cleanup_old_jobs(days=90, batch_size=1) == 2
    remaining = fetch_all(engine, "SELECT id FROM jobs")
    assert {r["id"] for r in remaining} == set(kept)
    orphans = scalar(engine, "SELECT count(*) FROM job_events WHERE job_id = ANY(:ids)",
                     ids=doomed)  # fmt: skip
    assert orphans == 0
    assert service.cleanup_old_jobs(days=0, statuses=["FINISHED"]) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"statuses": ["PROCESSING"]}, "only terminal jobs"),
        ({"statuses": []}, "at least 1"),
        ({"days": -1}, "days"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_cleanup_validation(engine: sa.Engine, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        JobService(engine).cleanup_old_jobs(**options)


# ---------------------------------------------------------------- watch


def test_watch_yields_the_row_then_notified_changes(engine: sa.Engine) -> None:
    job_id = add_job(engine, time.time() - 5, wait=1, percentage=30)
    other = add_job(engine, time.time() - 5, wait=1)
    updates = JobService(engine).watch_job(job_id)
    first = next(updates)
    assert (first.status, first.percentage) == ("PROCESSING", 30)
    write(engine, [event("task-progress", other, time.time(), percentage=99, message="other")])
    write(engine, [event("task-progress", job_id, time.time(), percentage=60, message="half")])
    second = next(updates)
    assert (second.job_id, second.percentage, second.message) == (job_id, 60, "half")
    write(engine, [event("task-succeeded", job_id, time.time(), runtime=2.0)])
    last = next(updates)
    assert (last.status, last.percentage, last.terminal) == ("FINISHED", 100, True)
    with pytest.raises(StopIteration):
        next(updates)


def test_watch_of_an_ended_job_and_timeout(engine: sa.Engine) -> None:
    done = add_job(engine, hour_base(1), wait=1, run=1, outcome="failed")
    assert [u.status for u in JobService(engine).watch_job(done)] == ["FAILED"]
    running_job = add_job(engine, hour_base(1), wait=1)
    updates = JobService(engine).watch_job(running_job, timeout=0.2)
    assert next(updates).status == "PROCESSING"
    with pytest.raises(WatchTimeout, match=r"still PROCESSING after 0\.2 s"):
        next(updates)


def test_unreachable_database_is_one_line() -> None:
    service = JobService("postgresql://127.0.0.1:1/nothing")
    url = re.escape("database postgresql+psycopg2://127.0.0.1:1/nothing: ")
    with pytest.raises(StoreError, match=f"^{url}"):
        service.get_job("x")
    with pytest.raises(StoreError, match=url):
        next(service.watch_job("x"))
    service.close()


# ---------------------------------------------------------------- real worker and listener


@pytest.mark.e2e
def test_cancel_running_and_queued_tasks_with_a_real_worker(
    engine: sa.Engine, db_url: str, redis_url: str, service_env: dict[str, str],
    tmp_path: Path, notifications: Notifications,
) -> None:  # fmt: skip
    client = Celery("client", broker=redis_url, set_as_current=False)
    client.conf.task_send_sent_event = True
    with running(job_tracker("listen"), service_env, tmp_path / "listen.log") as listener:
        wait_consuming(listener)
        worker_args = celery_worker("examples.ingest", f"cancel-{tmp_path.name}@%h", "celery", 1)
        with running(worker_args, service_env, tmp_path / "worker.log") as worker:
            wait_for(lambda: "ready" in worker.output(), 60, what="worker ready")
            busy = client.send_task(OCR, kwargs={"document_id": "d1", "seconds": 30}).id
            wait_for(lambda: status_of(engine, busy) == "PROCESSING", 30, what="ocr running")
            queued = client.send_task(OCR, kwargs={"document_id": "d2", "seconds": 0.1}).id
            wait_for(lambda: status_of(engine, queued) == "PENDING", 30, what="second queued")
            job = JobService(engine, celery_app=client).cancel_job(queued)
            assert (job.status, job.summary) == ("CANCELLED", "Cancelled by operator")
            result = CliRunner().invoke(main, ["cancel", busy, "--terminate", "--broker",
                                               redis_url, "--database", db_url])  # fmt: skip
            assert result.exit_code == 0, result.output
            assert "CANCELLED - Cancelled by operator" in result.stdout
            for job_id in (busy, queued):
                wait_for(partial(has_event, engine, job_id, "task-revoked"), 30,
                         what="task-revoked stored")  # fmt: skip
        client.close()
    busy_history = history(engine, busy)
    revoked = [h for h in busy_history if h["event_type"] == "task-revoked"]
    assert [h["message"] for h in revoked] == ["Terminated (signal 15)"]
    assert [h["event_type"] for h in busy_history].count("cancel-requested") == 1
    assert status_of(engine, busy) == status_of(engine, queued) == "CANCELLED"
    changes = notifications.statuses(busy)
    assert changes[-1] == "CANCELLED" and changes.count("CANCELLED") == 1, changes
    assert notifications.statuses(queued)[-1] == "CANCELLED"
