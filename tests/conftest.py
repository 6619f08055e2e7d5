"""Test fixtures on real services: a fresh PostgreSQL database per test, an own Redis db.

Service locations come from the environment (CI sets them):
- JT_TEST_POSTGRES_URL: any database on the server the tests may create databases on;
- JT_TEST_REDIS_URL: the Redis server and db number the tests own;
- AMQP_URL: a RabbitMQ server; tests marked `amqp` skip, saying so, when it is not set.
When JT_TEST_POSTGRES_URL or JT_TEST_REDIS_URL is not set, the session starts an embedded
PostgreSQL or Redis (tracker.embedded, from the test extra) in a temporary directory and
stops it at the end, so the suite runs on a machine with Python alone.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from tracker import store
from tracker.config import mask_broker_url

# Set here, or by pytest_sessionstart (embedded servers) before any test module is imported.
POSTGRES_URL = os.environ.get("JT_TEST_POSTGRES_URL", "")
REDIS_URL = os.environ.get("JT_TEST_REDIS_URL", "")
AMQP_URL = os.environ.get("AMQP_URL")

_counter = itertools.count()
_stop_embedded: list[Callable[[], None]] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Start embedded PostgreSQL / Redis for the services whose URL is not set."""
    global POSTGRES_URL, REDIS_URL
    if POSTGRES_URL and REDIS_URL:
        return
    try:
        from tracker import embedded
    except ImportError as exc:
        pytest.exit(f"JT_TEST_POSTGRES_URL / JT_TEST_REDIS_URL are not set and {exc}", 4)
    base = Path(tempfile.mkdtemp(prefix="jt-test-services-"))
    _stop_embedded.append(lambda: shutil.rmtree(base, ignore_errors=True))
    try:
        if not POSTGRES_URL:
            # fsync off: the server lives for one session, and the suite commits a lot.
            postgres = embedded.start_postgres(base / "postgres", durable=False)
            _stop_embedded.append(postgres.stop)
            POSTGRES_URL = postgres.url("postgres")
        if not REDIS_URL:
            redis = embedded.start_redis(base / "redis")
            _stop_embedded.append(redis.stop)
            REDIS_URL = redis.url(12)
    except embedded.EmbeddedError as exc:
        pytest.exit(f"cannot start the embedded servers (set JT_TEST_POSTGRES_URL and "
                    f"JT_TEST_REDIS_URL to use your own): {exc}", 4)  # fmt: skip


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the embedded servers this session started, and remove their files."""
    while _stop_embedded:
        _stop_embedded.pop()()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which services the suite runs on."""
    source = {True: "JT_TEST_*", False: "embedded"}
    pg = source[bool(os.environ.get("JT_TEST_POSTGRES_URL"))]
    redis = source[bool(os.environ.get("JT_TEST_REDIS_URL"))]
    amqp = "AMQP_URL" if AMQP_URL else "AMQP_URL not set: RabbitMQ tests skip"
    return [f"services: PostgreSQL {store.safe_url(POSTGRES_URL)} ({pg}), "
            f"Redis {mask_broker_url(REDIS_URL)} ({redis}), RabbitMQ: {amqp}"]  # fmt: skip


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
