"""Example Celery apps used by the README, the demo and the end-to-end tests."""
