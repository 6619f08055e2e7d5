"""The query and control commands of `job-tracker`, against the real PostgreSQL."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from rich.console import Console

from tests.helpers import fetch_all, job_tracker, running, scalar, wait_for
from tests.jobfactory import add_job, event, hour_base, write
from tracker.cli import main
from tracker.cli_query import (
    fmt_age,
    fmt_duration,
    page_caption,
    parse_when,
    render_live,
    sparkline,
)
from tracker.models import InvalidRequest, JobProgressUpdate
from tracker.service import JobService
from tracker.status import JobStatus

UNREACHABLE = "postgresql://127.0.0.1:1/nowhere"
OUTCOME_FIELDS: dict[str, dict[str, Any]] = {
    "task-succeeded": {"result": "'ok'", "runtime": 1.0},
    "task-failed": {"exception": "ValueError('x')", "traceback": ""},
}


def invoke(*args: str) -> Result:
    """Run a job-tracker command in-process."""
    return CliRunner().invoke(main, list(args))


def ok(*args: str) -> str:
    """Stdout of a command that must succeed."""
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def error_line(result: Result, code: int = 1) -> str:
    """The single stderr line of a command that must fail cleanly."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("job-tracker: error: "), result.stderr
    return lines[0].removeprefix("job-tracker: error: ")


class NoBroker:
    """A Celery app stand-in whose revoke does nothing (cancel without a worker)."""

    class control:
        @staticmethod
        def revoke(*_args: Any, **_kwargs: Any) -> None:
            """Celery's app.control.revoke."""


# ---------------------------------------------------------------- jobs, show, active


def test_jobs_table_json_paging_and_filters(engine: sa.Engine, db_url: str) -> None:
    old = add_job(engine, hour_base(5), wait=1, run=2, outcome="failed")
    older = add_job(engine, hour_base(6), wait=1, run=2, outcome="succeeded", user="bob")
    recent = add_job(engine, time.time() - 60, wait=1, percentage=40, doc_type="docx")
    table = ok("jobs", "--database", db_url)
    for job_id in (old, older, recent):
        assert job_id in table
    assert "showing 1-3 of 3 jobs" in table
    assert "PROCESSING" in table and "at 40%" in table

    def ids(*options: str) -> tuple[int, list[str]]:
        page = orjson.loads(ok("jobs", "--json", "--database", db_url, *options))
        return page["total"], [item["id"] for item in page["items"]]

    assert ids() == (3, [recent, old, older])
    capped = orjson.loads(ok("jobs", "--json", "--database", db_url, "--limit", "1"))
    assert (capped["total"], capped["total_is_capped"]) == (3, False)
    assert ids("--limit", "1", "--offset", "1") == (3, [old])
    assert ids("--status", "failed") == (1, [old])
    assert ids("--type", "docx") == (1, [recent])
    assert ids("--user", "bob") == (1, [older])
    assert ids("--since", "2h") == (1, [recent])
    assert ids("--until", "2h", "--priority", "normal") == (2, [old, older])
    assert ids("--since", "2000-01-01", "--task", "examples.ingest.extract")[0] == 3
    assert ids("--offset", "5") == (3, [])
    assert "no jobs at offset 5 (3 match)" in ok("jobs", "--offset", "5", "--database", db_url)


def test_jobs_total_capped_and_exact(
    engine: sa.Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        add_job(engine, hour_base(2) + i * 10, wait=1, run=1, outcome="succeeded")
    monkeypatch.setattr("tracker.cli_query.DEFAULT_COUNT_LIMIT", 2)
    page = orjson.loads(ok("jobs", "--json", "--limit", "1", "--database", db_url))
    assert (page["total"], page["total_is_capped"], len(page["items"])) == (2, True, 1)
    assert "showing 1-1 of more than 2 jobs" in ok("jobs", "--limit", "1", "--database", db_url)
    exact = orjson.loads(ok("jobs", "--json", "--exact-total", "--limit", "1",
                            "--database", db_url))  # fmt: skip
    assert (exact["total"], exact["total_is_capped"]) == (3, False)
    assert page_caption(10000, 9, 0, capped=True) == "no jobs at offset 9 (more than 10000 match)"


def test_show_every_field_and_the_timeline(engine: sa.Engine, db_url: str) -> None:
    job_id = add_job(engine, hour_base(1), wait=1, run=4, percentage=50, outcome="succeeded")
    text = ok("show", job_id, "--database", db_url)
    for expected in ("task_name", "examples.ingest.extract", "duration_seconds", "5.0s",
                     "error_details", "history", "task-sent", "task-progress", "at 50%",
                     "task-succeeded", "FINISHED"):  # fmt: skip
        assert expected in text
    detail = orjson.loads(ok("show", job_id, "--json", "--database", db_url))
    assert detail["job"]["id"] == job_id and detail["job"]["status"] == "FINISHED"
    assert [h["event_type"] for h in detail["history"]] == [
        "task-sent", "task-started", "task-progress", "task-succeeded"]  # fmt: skip
    assert error_line(invoke("show", job_id, "--user", "bob", "--database", db_url)) == (
        f"job {job_id!r} not found")  # fmt: skip


def test_active_jobs(engine: sa.Engine, db_url: str) -> None:
    mine = add_job(engine, hour_base(1), wait=1, percentage=10)
    theirs = add_job(engine, hour_base(1) + 1, user="bob")
    add_job(engine, hour_base(1), wait=1, run=1, outcome="succeeded")
    page = orjson.loads(ok("active", "--json", "--database", db_url))
    assert (page["total"], [i["id"] for i in page["items"]]) == (2, [theirs, mine])
    assert "1 active job" in ok("active", "--user", "alice", "--database", db_url)


# ---------------------------------------------------------------- stats


def test_stats_human_and_json(engine: sa.Engine, db_url: str) -> None:
    base = hour_base(2)
    add_job(engine, base, wait=2, run=8, outcome="succeeded")
    add_job(engine, base + 60, wait=1, run=3, outcome="failed", doc_type="docx",
            exception="KeyError('page')")  # fmt: skip
    add_job(engine, base + 120, user="bob")
    stats = orjson.loads(ok("stats", "--json", "--database", db_url))
    assert (stats["total_jobs"], stats["active_jobs"], stats["total_processing_time"]) == (3, 1, 14)
    assert stats["success_rate"] == 0.5
    assert stats["top_failures"] == [{"exception": "KeyError", "count": 1,
                                      "example": "KeyError('page')"}]  # fmt: skip
    assert orjson.loads(ok("stats", "--json", "--user", "bob", "--database", db_url))[
        "jobs_by_status"]["PENDING"] == 1  # fmt: skip
    text = ok("stats", "--days", "7", "--database", db_url)
    for expected in ("last 7 days", "total 3", "success rate 50.0%", "queue wait", "by type",
                     "docx", "top failures", "KeyError('page')", "jobs per hour"):  # fmt: skip
        assert expected in text
    assert "invalid days" in error_line(invoke("stats", "--days", "0", "--database", db_url))


# ---------------------------------------------------------------- cancel, cleanup


def test_cancel_and_refusal(engine: sa.Engine, db_url: str, redis_url: str) -> None:
    pending = add_job(engine, time.time() - 5)
    out = ok("cancel", pending, "--user", "alice", "--broker", redis_url, "--database", db_url)
    assert out == f"{pending}: CANCELLED - Cancelled by alice (revoke sent)\n"
    assert scalar(engine, "SELECT status FROM jobs WHERE id = :id", id=pending) == "CANCELLED"
    again = invoke("cancel", pending, "--broker", redis_url, "--database", db_url)
    assert error_line(again).startswith(f"job {pending!r} is already CANCELLED (Cancelled by")
    unknown = invoke("cancel", "nope", "--broker", redis_url, "--database", db_url)
    assert error_line(unknown) == "job 'nope' not found"
    bad_app = invoke("cancel", pending, "--app", "no_such_module_xyz", "--database", db_url)
    assert error_line(bad_app).startswith("cannot load Celery app 'no_such_module_xyz'")


def test_cleanup_dry_run_and_delete(engine: sa.Engine, db_url: str) -> None:
    old = time.time() - 100 * 86400
    add_job(engine, old, wait=1, run=1, outcome="succeeded")
    add_job(engine, old, wait=1, run=1, outcome="failed")
    young = add_job(engine, time.time() - 60, wait=1, run=1, outcome="succeeded")
    active = add_job(engine, old, wait=1)
    args = ("cleanup", "--older-than-days", "90", "--database", db_url)
    assert ok(*args, "--dry-run") == (
        "would delete 2 jobs (CANCELLED, FAILED, FINISHED) that ended more than 90 days ago\n"
    )
    assert ok(*args, "--status", "failed") == (
        "deleted 1 job (FAILED) that ended more than 90 days ago\n")  # fmt: skip
    assert ok(*args, "--batch-size", "1").startswith("deleted 1 job ")
    assert {r["id"] for r in fetch_all(engine, "SELECT id FROM jobs")} == {young, active}
    assert "invalid days" in error_line(invoke("cleanup", "--older-than-days", "-1",
                                               "--database", db_url))  # fmt: skip


# ---------------------------------------------------------------- errors, help


def test_bad_input_and_unreachable_database_are_one_line(db_url: str) -> None:
    limit = invoke("jobs", "--limit", "1001", "--database", db_url)
    assert error_line(limit) == "invalid limit: Input should be less than or equal to 1000"
    since = error_line(invoke("jobs", "--since", "yesterday", "--database", db_url))
    assert since.startswith("invalid --since 'yesterday': use ISO 8601")
    order = error_line(invoke("jobs", "--since", "1h", "--until", "2h", "--database", db_url))
    assert "date_from is after date_to" in order
    for command in (["jobs"], ["show", "x"], ["active"], ["stats"],
                    ["cleanup", "--older-than-days", "1"]):  # fmt: skip
        down = error_line(invoke(*command, "--database", UNREACHABLE))
        assert down.startswith("database postgresql+psycopg2://127.0.0.1:1/nowhere: ")
    assert error_line(invoke("watch", "x", "--database", UNREACHABLE), code=3)


def test_help_names_the_environment_variables() -> None:
    cancel_help = ok("cancel", "--help")
    for name in ("CELERY_BROKER_URL", "CELERY_APP", "DATABASE_URL", "JOB_TRACKER_USER"):
        assert name in cancel_help
    assert "DATABASE_URL" in ok("jobs", "--help")
    assert "0 FINISHED, 1 FAILED, 2 CANCELLED" in ok("watch", "--help")


# ---------------------------------------------------------------- watch


@pytest.mark.parametrize(
    ("outcome", "code"), [("task-succeeded", 0), ("task-failed", 1), ("cancel", 2)]
)
def test_watch_exits_with_the_outcome_when_notified(
    engine: sa.Engine, service_env: dict[str, str], tmp_path: Path, outcome: str, code: int
) -> None:
    job_id = add_job(engine, time.time() - 5, wait=1, percentage=20)
    with running(job_tracker("watch", job_id), service_env, tmp_path / "watch.log") as watch:
        # The first line is printed after LISTEN: from then on every commit is seen.
        wait_for(lambda: "PROCESSING 20%" in watch.output(), 30, what="watch started")
        write(engine, [event("task-progress", job_id, time.time(), percentage=70,
                             message="nearly")])  # fmt: skip
        if outcome == "cancel":
            JobService(engine, celery_app=NoBroker()).cancel_job(job_id)
        else:
            write(engine, [event(outcome, job_id, time.time() + 0.01, **OUTCOME_FIELDS[outcome])])
        wait_for(lambda: watch.popen.poll() is not None, 30, what="watch exit")
        assert watch.popen.returncode == code, watch.output()
    lines = watch.output().splitlines()
    assert "PROCESSING 70% nearly" in lines[1]
    assert lines[-1].split(" ", 1)[1].startswith(("FINISHED", "FAILED", "CANCELLED"))


def test_watch_of_an_ended_or_unknown_job(engine: sa.Engine, db_url: str) -> None:
    done = add_job(engine, hour_base(1), wait=1, run=1, outcome="revoked")
    result = invoke("watch", done, "--database", db_url)
    assert result.exit_code == 2
    assert "CANCELLED 0% Terminated (signal 15)" in result.stdout
    assert error_line(invoke("watch", "nope", "--database", db_url), code=3) == (
        "job 'nope' not found")  # fmt: skip
    running_job = add_job(engine, hour_base(1), wait=1)
    slow = invoke("watch", running_job, "--timeout", "0.2", "--database", db_url)
    assert "still PROCESSING after 0.2 s" in error_line(slow, code=3)


def test_live_progress_bar_rendering() -> None:
    now = datetime.now(UTC)
    steps = [(JobStatus.PROCESSING, 10, "starting"), (JobStatus.PROCESSING, 60, "embedding"),
             (JobStatus.FINISHED, 100, "done")]  # fmt: skip
    updates = [JobProgressUpdate(job_id="j", status=status, percentage=p, message=m,
                                 timestamp=now) for status, p, m in steps]  # fmt: skip
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=True, width=100)
    assert render_live(iter(updates), out).status == "FINISHED"
    assert "done" in buffer.getvalue() and "100%" in buffer.getvalue()


# ---------------------------------------------------------------- formatting


def test_human_formats() -> None:
    assert [fmt_duration(s) for s in (None, 0.25, 12.34, 245, 7380, 3 * 86400 + 4 * 3600)] == [
        "-", "250ms", "12.3s", "4m05s", "2h03m", "3d04h"]  # fmt: skip
    now = datetime.now(UTC)
    assert fmt_age(now, now) == "0s"
    assert sparkline([0, 1, 4]) == "▁▃█ (peak 4/h)" and sparkline([0, 0]) == "no jobs"
    since = parse_when("2h", "--since")
    assert since is not None and abs((now - since).total_seconds() - 7200) < 5
    assert parse_when("2025-05-01T10:00+02:00", "--since") == datetime.fromisoformat(
        "2025-05-01T08:00+00:00")  # fmt: skip
    with pytest.raises(InvalidRequest, match="--until"):
        parse_when("soon", "--until")
