"""End to end: a real `celery worker -E` on Redis, the real `job-tracker listen`, PostgreSQL."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from examples import ingest
from tests.helpers import (
    Proc,
    celery_worker,
    fetch_all,
    job_tracker,
    running,
    wait_consuming,
    wait_for,
)

pytestmark = pytest.mark.e2e
TERMINAL = ("FINISHED", "FAILED", "CANCELLED")


@pytest.fixture
def stack(service_env: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[Proc]:
    """A listener (gpu is a remote queue) and a worker serving celery and gpu."""
    ingest.app.conf.broker_url = redis_url
    listen_args = job_tracker("listen", "--remote-queue", "gpu", "--stats-interval", "1")
    with running(listen_args, service_env, tmp_path / "listen.log") as listener:
        wait_consuming(listener)
        worker_args = celery_worker("examples.ingest", f"e2e-{tmp_path.name}@%h")
        with running(worker_args, service_env, tmp_path / "worker.log") as worker:
            wait_for(lambda: "ready" in worker.output(), 60, what="worker ready")
            yield listener
        assert listener.popen.poll() is None, listener.output()
        listener.signal(signal.SIGTERM)
        assert listener.popen.wait(15) == 0, listener.output()
        assert '"listen_stopped"' in listener.output()


def job(engine: sa.Engine, job_id: str) -> dict[str, Any]:
    """The jobs row of a task id ({} while it does not exist)."""
    rows = fetch_all(engine, "SELECT * FROM jobs WHERE id = :id", id=job_id)
    return rows[0] if rows else {}


def history(engine: sa.Engine, job_id: str) -> list[dict[str, Any]]:
    """The job's history rows in time order."""
    return fetch_all(engine, "SELECT * FROM job_events WHERE job_id = :id "
                             "ORDER BY occurred_at, id", id=job_id)  # fmt: skip


def wait_terminal(engine: sa.Engine, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until the job's row is terminal; return it."""

    def terminal_row() -> dict[str, Any]:
        row = job(engine, job_id)
        return row if row.get("status") in TERMINAL else {}

    return wait_for(terminal_row, timeout, what=f"job {job_id} terminal")


def test_pipeline_with_progress_and_remote_queue(stack: Proc, engine: sa.Engine) -> None:
    result = ingest.ingest("doc-7", "contract.pdf", "pdf", "alice", priority="high",
                           metadata={"source": "upload"})  # fmt: skip
    ids = [result.id, result.parent.id, result.parent.parent.id, result.parent.parent.parent.id]
    store_id, embed_id, chunk_id, extract_id = ids
    for job_id in ids:
        wait_terminal(engine, job_id)
    extract = job(engine, extract_id)
    assert extract["status"] == "FINISHED"
    assert extract["percentage"] == 100
    assert extract["task_name"] == "examples.ingest.extract"
    assert (extract["document_id"], extract["document_name"], extract["document_type"],
            extract["user_id"], extract["priority"]) == ("doc-7", "contract.pdf", "pdf",
                                                         "alice", "HIGH")  # fmt: skip
    assert extract["metadata"] == {"source": "upload", "stage": "extract"}
    assert extract["worker"].startswith("e2e-")
    assert extract["started_at"] >= extract["start_date"]
    assert extract["end_date"] >= extract["started_at"]
    assert extract["duration_seconds"] > 0
    types = [h["event_type"] for h in history(engine, extract_id)]
    assert types[:3] == ["task-sent", "task-received", "task-started"]
    assert types.count("task-progress") == 3
    assert types[-1] == "task-succeeded"
    progress = [h for h in history(engine, extract_id) if h["event_type"] == "task-progress"]
    assert [p["percentage"] for p in progress] == [25, 50, 75]
    assert progress[0]["message"] == "extracting page 1/3"
    embed_history = history(engine, embed_id)
    assert embed_history[0]["status"] == "WAITING_FOR_REMOTE_WORKER"
    assert job(engine, embed_id)["queue"] == "gpu"
    for child in (chunk_id, embed_id, store_id):
        assert job(engine, child)["root_id"] == extract_id
    assert job(engine, store_id)["result"] == "'stored 12 vectors for doc-7'"


def test_failure_retries_and_exhaustion(stack: Proc, engine: sa.Engine) -> None:
    bad_doc = {"document_id": "doc-bad", "document_name": "x.bin", "document_type": "corrupt"}
    bad = ingest.extract.apply_async(kwargs={**bad_doc, "user_id": "bob"})
    flaky = ingest.fetch_remote.delay("https://example.invalid/a", fail_times=2)
    dead = ingest.fetch_unavailable.delay("https://example.invalid/b")
    failed = wait_terminal(engine, bad.id)
    assert failed["status"] == "FAILED"
    assert failed["summary"].startswith("Failed: ValueError('cannot parse x.bin")
    assert "Traceback (most recent call last)" in failed["error_details"]
    assert failed["percentage"] == 75
    recovered = wait_terminal(engine, flaky.id)
    assert (recovered["status"], recovered["retries"]) == ("FINISHED", 2)
    retried = [h for h in history(engine, flaky.id) if h["event_type"] == "task-retried"]
    assert len(retried) == 2
    assert (
        retried[0]["message"] == "Retrying: ConnectionError('https://example.invalid/a timed out')"
    )
    exhausted = wait_terminal(engine, dead.id)
    assert (exhausted["status"], exhausted["retries"]) == ("FAILED", 2)
    assert "is unavailable" in exhausted["error_details"]


def test_revoke_running_task_with_terminate_and_expiry(stack: Proc, engine: sa.Engine) -> None:
    long = ingest.ocr.delay("doc-ocr", seconds=30)
    wait_for(lambda: job(engine, long.id).get("percentage", 0) > 0, 30, what="ocr progress")
    ingest.app.control.revoke(long.id, terminate=True, signal="SIGTERM")
    cancelled = wait_terminal(engine, long.id)
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["summary"] == "Terminated (signal 15)"
    assert cancelled["end_date"] is not None
    late = ingest.extract.apply_async(
        kwargs={"document_id": "d", "document_name": "n", "document_type": "pdf", "user_id": "u"},
        countdown=2,
        expires=1,
    )
    expired = wait_terminal(engine, late.id)
    assert (expired["status"], expired["summary"]) == ("CANCELLED", "Expired before it ran")
    assert expired["started_at"] is None
