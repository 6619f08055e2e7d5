"""Test fixtures on real services: a fresh PostgreSQL database per test, an own Redis db.

Service locations come from the environment (CI sets them):
- JT_TEST_POSTGRES_URL: any database on the server the tests may create databases on
  (default postgresql:///postgres, the local socket);
- JT_TEST_REDIS_URL: the Redis server and db number the tests own (default redis://localhost:6379/12);
- AMQP_URL: a RabbitMQ server; tests marked `amqp` skip, saying so, when it is not set.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from tracker import store

POSTGRES_URL = os.environ.get("JT_TEST_POSTGRES_URL", "postgresql:///postgres")
REDIS_URL = os.environ.get("JT_TEST_REDIS_URL", "redis://localhost:6379/12")
AMQP_URL = os.environ.get("AMQP_URL")

_counter = itertools.count()


def _admin() -> sa.Engine:
    """An autocommit engine on the maintenance database."""
    return store.create_engine(POSTGRES_URL).execution_options(isolation_level="AUTOCOMMIT")


def _url_for(name: str) -> URL:
    """The URL of database `name` on the test server."""
    return store.driver_url(POSTGRES_URL).set(database=name)


def _drop(admin: sa.Engine, name: str) -> None:
    """Drop a test database, disconnecting anyone still on it."""
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database holding schema.sql, the template of every test database."""
    name = f"jt_tpl_{os.getpid()}"
    admin = _admin()
    _drop(admin, name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = store.create_engine(_url_for(name))
    store.apply_schema(engine)
    engine.dispose()
    yield name
    _drop(admin, name)
    admin.dispose()


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    """A fresh database with the schema applied, dropped after the test."""
    name = f"jt_t_{os.getpid()}_{next(_counter)}"
    admin = _admin()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _url_for(name).render_as_string(hide_password=False)
    _drop(admin, name)
    admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on the fresh test database."""
    eng = store.create_engine(db_url, pool_size=4)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis broker URL (own db number) the tests use."""
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    """The RabbitMQ URL, or a skip that says why."""
    if not AMQP_URL:
        pytest.skip("AMQP_URL is not set: RabbitMQ tests need a RabbitMQ server")
    return AMQP_URL


@pytest.fixture
def service_env(db_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses (worker, listener) pointing at the test services."""
    env = dict(os.environ)
    env.update(
        CELERY_BROKER_URL=redis_url,
        DATABASE_URL=db_url,
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        JOB_TRACKER_LOG_JSON="true",
        JOB_TRACKER_SPOOL_DIR=str(tmp_path / "spool"),
        PYTHONUNBUFFERED="1",
    )
    return env
