"""A document-ingestion pipeline (extract -> chunk -> embed -> store) that reports progress.

The only tracking code is `self.send_event('task-progress', ...)`: job-tracker builds
everything else from Celery's own events. Run a worker with:

    celery -A examples.ingest worker -E -Q celery,gpu
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task, chain
from celery.result import AsyncResult

app = Celery(
    "ingest",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
)
app.conf.update(
    task_send_sent_event=True,  # producers emit task-sent: jobs appear as soon as queued
    # Same as `worker -E` (INGEST_NO_EVENTS=1 shows what happens when it is forgotten).
    worker_send_task_events=not os.environ.get("INGEST_NO_EVENTS"),
    task_routes={"examples.ingest.embed": {"queue": "gpu"}},  # served by remote GPU workers
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

STEP_DELAY = float(os.environ.get("INGEST_STEP_DELAY", "0.05"))


def progress(task: Task, percentage: int, message: str, **extra: Any) -> None:
    """Report progress: one line in the task, a job update in PostgreSQL."""
    task.send_event("task-progress", percentage=percentage, message=message, **extra)


@app.task(bind=True, name="examples.ingest.extract")
def extract(self: Task, document_id: str, document_name: str, document_type: str,
            user_id: str, priority: str = "NORMAL", metadata: dict[str, Any] | None = None,
            pages: int = 3) -> dict[str, Any]:  # fmt: skip
    """Extract text from a document; a 'corrupt' document fails."""
    for page in range(1, pages + 1):
        time.sleep(STEP_DELAY)
        progress(self, int(100 * page / (pages + 1)), f"extracting page {page}/{pages}",
                 stage="extract")  # fmt: skip
    if document_type == "corrupt":
        raise ValueError(f"cannot parse {document_name}: not a valid file")
    return {"document_id": document_id, "text": f"text of {document_name}", "pages": pages}


@app.task(bind=True, name="examples.ingest.chunk")
def chunk(self: Task, doc: dict[str, Any]) -> dict[str, Any]:
    """Split the text into chunks."""
    progress(self, 50, "chunking", stage="chunk")
    time.sleep(STEP_DELAY)
    return {**doc, "chunks": doc["pages"] * 4}


@app.task(bind=True, name="examples.ingest.embed")
def embed(self: Task, doc: dict[str, Any]) -> dict[str, Any]:
    """Embed the chunks (routed to the remote `gpu` queue)."""
    for i in range(1, 3):
        time.sleep(STEP_DELAY)
        progress(self, 50 * i, f"embedding batch {i}/2", stage="embed")
    return {**doc, "vectors": doc["chunks"]}


@app.task(bind=True, name="examples.ingest.store")
def store(self: Task, doc: dict[str, Any]) -> str:
    """Store the vectors."""
    progress(self, 90, "storing vectors", stage="store")
    return f"stored {doc['vectors']} vectors for {doc['document_id']}"


@app.task(bind=True, name="examples.ingest.fetch_remote", max_retries=3,
          default_retry_delay=0.2)  # fmt: skip
def fetch_remote(self: Task, url: str, fail_times: int = 1) -> str:
    """Fetch a source file; fails transiently `fail_times` times, then succeeds."""
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"{url} timed out"))
    return f"fetched {url}"


@app.task(bind=True, name="examples.ingest.fetch_unavailable", max_retries=2,
          default_retry_delay=0.2)  # fmt: skip
def fetch_unavailable(self: Task, url: str) -> str:
    """A source that never answers: retries are exhausted and the job fails."""
    raise self.retry(exc=ConnectionError(f"{url} is unavailable"))


@app.task(bind=True, name="examples.ingest.ocr")
def ocr(self: Task, document_id: str, seconds: float = 30.0) -> str:
    """A long OCR run that reports progress every step (cancelled in the demo)."""
    steps = 100
    for step in range(steps):
        time.sleep(seconds / steps)
        if step % 10 == 0:
            progress(self, step, f"OCR step {step}/{steps}", stage="ocr")
    return "ocr done"


def ingest(document_id: str, document_name: str, document_type: str, user_id: str,
           priority: str = "NORMAL", **extra: Any) -> AsyncResult:  # fmt: skip
    """Submit the whole pipeline for one document."""
    first = extract.s(document_id=document_id, document_name=document_name,
                      document_type=document_type, user_id=user_id, priority=priority,
                      **extra)  # fmt: skip
    return chain(first, chunk.s(), embed.s(), store.s()).apply_async()
