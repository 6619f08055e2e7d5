"""job-tracker: durable job tracking for Celery, built on the Celery event stream."""

__version__ = "0.1.0"
