"""The first five minutes, with no service URL set: `job-tracker demo` on embedded servers,
and the test suite falling back to embedded PostgreSQL and Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import REPO, fetch_all, job_tracker
from tracker import embedded, store

SERVICE_VARS = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_APP",
                "JT_TEST_POSTGRES_URL", "JT_TEST_REDIS_URL", "AMQP_URL")  # fmt: skip
SUMMARY = "demo: 20 jobs tracked to a terminal state (17 finished, 2 failed, 1 cancelled)"


def bare_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a new user: no service URL, a data directory of their own."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command from the checkout, as the README does."""
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.e2e
def test_demo_tracks_every_job_to_its_terminal_state_on_embedded_services(tmp_path: Path) -> None:
    result = run(job_tracker("demo", "--no-live", "--jobs", "20"), bare_env(tmp_path), 150)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert result.stdout.splitlines()[-1] == SUMMARY
    # The remote gpu worker starts only once a job is seen waiting for it.
    assert re.search(r"embed\s+WAITING_FOR_REMOTE_WORKER", result.stdout), result.stdout
    assert "cancelled" in result.stdout and "JobService.cancel_job(terminate=True)" in output
    # Everything it started has stopped; the data stays where the demo said it lives.
    pgdata = tmp_path / "data" / "job-tracker" / "demo" / "postgres"
    assert not (pgdata / "postmaster.pid").exists()
    assert f"files     {pgdata}" in result.stdout
    server = embedded.start_postgres(pgdata)
    try:
        check_stored_jobs(store.create_engine(server.url("job_tracker")))
    finally:
        server.stop()


def check_stored_jobs(engine: sa.Engine) -> None:
    """The rows the demo left match its plan: retries counted, the cancel and the wait recorded."""
    jobs = {r["task_name"].removeprefix("examples.ingest."): r for r in fetch_all(
        engine, "SELECT task_name, status, retries, summary FROM jobs")}  # fmt: skip
    assert jobs["fetch_remote"]["status"] == "FINISHED" and jobs["fetch_remote"]["retries"] == 1
    assert jobs["fetch_unavailable"]["status"] == "FAILED"
    assert jobs["fetch_unavailable"]["retries"] == 2
    assert jobs["ocr"]["status"] == "CANCELLED"
    history = fetch_all(engine, "SELECT j.task_name, e.event_type, e.status FROM job_events e "
                                "JOIN jobs j ON j.id = e.job_id")  # fmt: skip
    ocr = {(h["event_type"], h["status"]) for h in history if h["task_name"].endswith(".ocr")}
    assert ("task-progress", "PROCESSING") in ocr and ("task-revoked", "CANCELLED") in ocr
    waits = [h for h in history if h["status"] == "WAITING_FOR_REMOTE_WORKER"]
    assert waits and all(h["task_name"] == "examples.ingest.embed" for h in waits)
    engine.dispose()


def test_demo_stop_stops_servers_a_kept_demo_left_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    postgres = embedded.start_postgres(data_dir / "postgres")
    redis = embedded.start_redis(data_dir / "redis")
    try:
        args = job_tracker("demo", "--stop", "--data-dir", str(data_dir))
        result = run(args, bare_env(tmp_path), 60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "demo: stopped Redis and PostgreSQL"
        assert not (data_dir / "postgres" / "postmaster.pid").exists()
        assert not (data_dir / "redis" / "redis.port").exists()
        again = run(args, bare_env(tmp_path), 60)
        assert again.stdout.strip() == "demo: stopped nothing (none running)"
    finally:
        postgres.stop()
        redis.stop()


def test_suite_falls_back_to_embedded_servers_without_service_urls(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "pytest", "tests/test_merge.py", "-k", "concurrent",
            "-p", "no:cacheprovider"]  # fmt: skip
    result = run(args, bare_env(tmp_path), 120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"services: PostgreSQL postgresql://postgres@127\.0\.0\.1:\d+/postgres "
                     r"\(embedded\), Redis redis://127\.0\.0\.1:\d+/12 \(embedded\)",
                     result.stdout), result.stdout[:2000]  # fmt: skip
    assert "1 passed" in result.stdout
