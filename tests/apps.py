"""A Celery app whose broker comes from its own settings (for `listen --app`)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("tests-app", broker=os.environ.get("INGEST_BROKER_URL", "redis://localhost:6379/12"))
