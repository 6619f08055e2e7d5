"""The CLI's schema commands and argument errors, against the real PostgreSQL."""

from __future__ import annotations

import os
import subprocess

import sqlalchemy as sa

from tests.conftest import POSTGRES_URL
from tests.helpers import REPO, job_tracker, scalar
from tracker import store


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the job-tracker console script."""
    return subprocess.run(job_tracker(*args), capture_output=True, text=True, timeout=60,
                          env=env or dict(os.environ), cwd=REPO, check=False)  # fmt: skip


def test_schema_prints_schema_sql() -> None:
    result = run("schema")
    assert result.returncode == 0
    assert result.stdout == (REPO / "schema.sql").read_text()


def test_init_db_creates_database_and_is_idempotent() -> None:
    name = f"jt_cli_{os.getpid()}"
    url = store.driver_url(POSTGRES_URL).set(database=name).render_as_string(False)
    admin = store.create_engine(POSTGRES_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        first = run("init-db", "--database", url)
        assert first.returncode == 0, first.stderr
        assert "created database" in first.stdout
        second = run("init-db", "--database", url)
        assert second.returncode == 0, second.stderr
        assert "created database" not in second.stdout
        assert "schema version 1 applied" in second.stdout
        engine = store.create_engine(url)
        assert scalar(engine, "SELECT count(*) FROM job_tracker_meta") == 1
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_init_db_refuses_a_newer_schema(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE job_tracker_meta SET value = '99' WHERE key = 'schema_version'"
        )
    result = run("init-db", "--database", db_url)
    assert result.returncode == 1
    assert result.stderr.startswith("job-tracker: error: the database holds job-tracker schema "
                                    "version 99")  # fmt: skip
    assert "Traceback" not in result.stderr


def test_listen_refuses_a_database_without_schema(tmp_path: object) -> None:
    env = dict(os.environ, DATABASE_URL=POSTGRES_URL)
    result = run("listen", env=env)
    assert result.returncode == 1
    assert "holds no job-tracker schema" in result.stderr
    assert "run `job-tracker init-db`" in result.stderr


def test_bad_arguments_give_one_clear_line() -> None:
    result = run("listen", "--batch-size", "0")
    assert result.returncode == 2
    assert "Invalid value for '--batch-size'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_shows_environment_variables() -> None:
    result = run("listen", "--help")
    for var in (
        "CELERY_BROKER_URL",
        "CELERY_APP",
        "DATABASE_URL",
        "JOB_TRACKER_REMOTE_QUEUES",
        "JOB_TRACKER_QUEUE",
        "JOB_TRACKER_BATCH_SIZE",
        "JOB_TRACKER_FLUSH_INTERVAL",
    ):
        assert var in result.stdout
