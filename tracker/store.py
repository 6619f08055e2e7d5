"""PostgreSQL access for the listener: schema, the batch merge, dead events, liveness.

Every SQL statement the daemon runs lives here. Driver errors are translated at
this boundary into `TransientStoreError` (retry the same batch later) and
`BadDataError` (the batch holds something PostgreSQL refuses).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from tracker.changes import FIRST_NON_NULL, REGISTERS, JobChange
from tracker.mapping import HistoryRow

SCHEMA_VERSION = 1
SCHEMA_LOCK = 7_514_301  # advisory lock id held while the schema is applied


class StoreError(Exception):
    """A database problem, described without secrets."""


class TransientStoreError(StoreError):
    """The database is unreachable or asked us to retry (deadlock, restart)."""


class BadDataError(StoreError):
    """PostgreSQL refused the data itself; retrying the same rows will not help."""


class SchemaError(StoreError):
    """The database's schema is missing, or newer than this job-tracker knows."""


def schema_sql() -> str:
    """The text of schema.sql (packaged copy, or the repository's top-level file)."""
    packaged = resources.files("tracker").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "schema.sql").read_text(encoding="utf-8")


def safe_url(url: str | URL) -> str:
    """A database URL with its password masked, fit for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def driver_url(url: str | URL) -> URL:
    """The URL with the psycopg2 driver (SQLAlchemy 2.1 picks psycopg 3 for postgresql://)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StoreError(f"invalid database URL: {type(exc).__name__}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def create_engine(url: str | URL, pool_size: int = 2) -> Engine:
    """An engine that never puts bound parameters (event data) into error messages."""
    return sa.create_engine(
        driver_url(url), pool_size=pool_size, pool_pre_ping=True, hide_parameters=True
    )


def describe_error(exc: BaseException) -> str:
    """A one-line description of a driver error, without SQL text or parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return (text[0] if text else type(orig).__name__)[:500]


@contextmanager
def translated() -> Iterator[None]:
    """Run a block whose driver errors become StoreError subclasses (see `translate`)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise translate(exc) from exc


def translate(exc: sa.exc.SQLAlchemyError) -> StoreError:
    """Classify a SQLAlchemy error as transient or bad data."""
    message = describe_error(exc)
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or getattr(
        exc, "connection_invalidated", False
    ):
        return TransientStoreError(message)
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError | sa.exc.ProgrammingError):
        return BadDataError(message)
    return TransientStoreError(message)


# ---------------------------------------------------------------- schema


def ensure_database(url: str) -> bool:
    """Create the database named in `url` if it does not exist; True when created."""
    target = driver_url(url)
    name = target.database
    if not name:
        raise StoreError("the database URL names no database")
    admin = create_engine(target.set(database="postgres"))
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
            return True
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(
            f"cannot create database {name!r} on {safe_url(url)}: {describe_error(exc)}"
        ) from exc
    finally:
        admin.dispose()


def installed_version(conn: sa.Connection) -> int | None:
    """The schema version recorded in the database, or None when there is none."""
    if conn.exec_driver_sql("SELECT to_regclass('job_tracker_meta')").scalar() is None:
        return None
    value = conn.exec_driver_sql(
        "SELECT value FROM job_tracker_meta WHERE key = 'schema_version'"
    ).scalar()
    return int(value) if value is not None else None


def apply_schema(engine: Engine) -> int:
    """Apply schema.sql idempotently; refuse a database with a newer schema version."""
    with translated(), engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        version = installed_version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaError(
                f"the database holds job-tracker schema version {version}, newer than "
                f"version {SCHEMA_VERSION} that this job-tracker knows; upgrade job-tracker"
            )
        conn.exec_driver_sql(schema_sql())
    return SCHEMA_VERSION


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database holds exactly our schema version."""
    with translated(), engine.connect() as conn:
        version = installed_version(conn)
    if version != SCHEMA_VERSION:
        found = "no job-tracker schema" if version is None else f"schema version {version}"
        raise SchemaError(
            f"the database holds {found}; this job-tracker needs version "
            f"{SCHEMA_VERSION}: run `job-tracker init-db`"
        )


# ---------------------------------------------------------------- the batch merge

_JOB_COLUMNS = """
    id text, task_name text, args text, kwargs text, queue text, parent_id text,
    root_id text, result text, error_details text, document_id text, document_name text,
    document_type text, user_id text, estimated_duration integer, priority text,
    start_ts double precision, started_ts double precision, retries integer,
    status text, status_key text, end_ts double precision, percentage integer,
    percentage_key text, summary text, summary_key text, worker text, worker_key text,
    metadata jsonb
"""


def _first_non_null(column: str) -> str:
    """SET clause: the stored value unless it is NULL (see changes.FIRST_NON_NULL)."""
    return f"        {column} = COALESCE(j.{column}, EXCLUDED.{column}),"


def _register(column: str) -> str:
    """SET clauses: last writer wins by the merge key (see changes.REGISTERS)."""
    key = f"merge_{column}_key"
    return (
        f"        {column} = CASE WHEN jt_newer(EXCLUDED.{key}, j.{key})\n"
        f"            THEN EXCLUDED.{column} ELSE j.{column} END,\n"
        f"        {key} = GREATEST(j.{key}, EXCLUDED.{key}),"
    )


# Generated from the same field lists as the Python join, so the two cannot drift apart.
_FIRST_NON_NULL_SET = "\n".join(_first_non_null(c) for c in FIRST_NON_NULL)
_REGISTERS_SET = "\n".join(_register(c) for c in REGISTERS if c != "status")

# One round trip per batch: upsert jobs (taking their row locks in id order, so two
# trackers never deadlock), notify, insert history (duplicates ignored), then raise
# `retries` to the number of distinct task-retried events now stored. That last
# statement runs after the row locks are held, so it sees every committed retry.
APPLY_BATCH = f"""
WITH incoming AS (
    SELECT * FROM jsonb_to_recordset(%(jobs)s::jsonb) AS r({_JOB_COLUMNS})
), upserted AS (
    INSERT INTO jobs AS j (
        id, task_name, args, kwargs, queue, parent_id, root_id, result, error_details,
        document_id, document_name, document_type, user_id, estimated_duration, priority,
        retries, status, percentage, summary, worker, metadata, start_date, started_at,
        end_date, merge_status_key, merge_percentage_key, merge_summary_key,
        merge_worker_key, merge_metadata)
    SELECT
        id, task_name, args, kwargs, queue, parent_id, root_id, result, error_details,
        document_id, document_name, document_type, user_id, estimated_duration,
        COALESCE(priority, 'NORMAL'), COALESCE(retries, 0), COALESCE(status, 'PENDING'),
        COALESCE(percentage, 0), summary, worker, jt_lww_values(metadata),
        to_timestamp(start_ts), to_timestamp(started_ts), to_timestamp(end_ts),
        status_key, percentage_key, summary_key, worker_key, COALESCE(metadata, '{{}}')
    FROM incoming
    ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
{_FIRST_NON_NULL_SET}
        priority = CASE WHEN j.priority = 'NORMAL' THEN EXCLUDED.priority ELSE j.priority END,
        retries = GREATEST(j.retries, EXCLUDED.retries),
        start_date = LEAST(j.start_date, EXCLUDED.start_date),
        started_at = LEAST(j.started_at, EXCLUDED.started_at),
        status = CASE WHEN jt_newer(EXCLUDED.merge_status_key, j.merge_status_key)
                      THEN EXCLUDED.status ELSE j.status END,
        end_date = CASE WHEN jt_newer(EXCLUDED.merge_status_key, j.merge_status_key)
                        THEN EXCLUDED.end_date ELSE j.end_date END,
        merge_status_key = GREATEST(j.merge_status_key, EXCLUDED.merge_status_key),
{_REGISTERS_SET}
        metadata = CASE WHEN EXCLUDED.merge_metadata = '{{}}' THEN j.metadata
                        ELSE jt_lww_values(jt_lww_merge(j.merge_metadata, EXCLUDED.merge_metadata))
                   END,
        merge_metadata = CASE WHEN EXCLUDED.merge_metadata = '{{}}' THEN j.merge_metadata
                              ELSE jt_lww_merge(j.merge_metadata, EXCLUDED.merge_metadata) END,
        updated_at = now()
    RETURNING j.id, j.status, j.percentage, j.summary, j.user_id, j.task_name
)
SELECT count(pg_notify('job_updates', json_build_object(
    'id', id, 'status', status, 'percentage', percentage, 'summary', left(summary, 200),
    'user_id', user_id, 'task_name', task_name)::text))
FROM upserted;

INSERT INTO job_events (job_id, event_key, event_type, status, percentage, message,
                        hostname, occurred_at, received_at, details)
SELECT job_id, event_key, event_type, status, percentage, message, hostname,
       to_timestamp(occurred_ts), to_timestamp(received_ts), COALESCE(details, '{{}}')
FROM jsonb_to_recordset(%(events)s::jsonb) AS e(
    job_id text, event_key text, event_type text, status text, percentage integer,
    message text, hostname text, occurred_ts double precision,
    received_ts double precision, details jsonb)
ORDER BY job_id, event_key
ON CONFLICT (job_id, event_key) DO NOTHING;

UPDATE jobs AS j SET retries = c.n
FROM (
    SELECT job_id, count(*)::integer AS n FROM job_events
    WHERE job_id = ANY(%(retried)s::text[]) AND event_type = 'task-retried'
    GROUP BY job_id
) AS c
WHERE j.id = c.job_id AND j.retries < c.n;
"""


def _json_default(value: Any) -> Any:
    """Encode what literal_eval can produce but JSON cannot (sets, bytes, complex...)."""
    if isinstance(value, set | frozenset):
        return sorted(repr(v) for v in value)
    return repr(value)


def _dumps(rows: Any) -> str:
    """JSON text for PostgreSQL."""
    return orjson.dumps(rows, default=_json_default).decode()


def job_row(change: JobChange) -> dict[str, Any]:
    """The JSON row of one job change, as APPLY_BATCH reads it."""
    row: dict[str, Any] = {
        "id": change.id,
        "task_name": change.task_name,
        "args": change.args,
        "kwargs": change.kwargs,
        "queue": change.queue,
        "parent_id": change.parent_id,
        "root_id": change.root_id,
        "result": change.result,
        "error_details": change.error_details,
        "document_id": change.document_id,
        "document_name": change.document_name,
        "document_type": change.document_type,
        "user_id": change.user_id,
        "estimated_duration": change.estimated_duration,
        "priority": change.priority.value if change.priority else None,
        "start_ts": change.start_ts,
        "started_ts": change.started_ts,
        "retries": change.retries,
        "metadata": {k: list(v) for k, v in change.metadata.items()},
    }
    if change.status is not None:
        key, (status, end_ts) = change.status
        row.update(status=status, status_key=key, end_ts=end_ts)
    for name in ("percentage", "summary", "worker"):
        register = getattr(change, name)
        if register is not None:
            row[f"{name}_key"], row[name] = register
    return row


def history_row(h: HistoryRow) -> dict[str, Any]:
    """The JSON row of one history entry (by hand: dataclasses.asdict deep-copies)."""
    return {
        "job_id": h.job_id,
        "event_key": h.event_key,
        "event_type": h.event_type,
        "status": h.status,
        "percentage": h.percentage,
        "message": h.message,
        "hostname": h.hostname,
        "occurred_ts": h.occurred_ts,
        "received_ts": h.received_ts,
        "details": h.details,
    }


def apply_batch(engine: Engine, jobs: Sequence[JobChange], history: Iterable[HistoryRow]) -> None:
    """Merge a batch of job changes and history rows in one transaction."""
    params = {
        "jobs": _dumps([job_row(c) for c in jobs]),
        "events": _dumps([history_row(h) for h in history]),
        "retried": [c.id for c in jobs if c.retried],
    }
    with translated(), engine.begin() as conn:
        conn.exec_driver_sql(APPLY_BATCH, params)


def store_dead_events(engine: Engine, error: str, events: Iterable[dict[str, Any]]) -> None:
    """Keep events PostgreSQL refused, with the reason, in job_tracker_dead_events."""
    rows = [{"error": error[:2000], "event": _dumps(e)} for e in events]
    if not rows:
        return
    with translated(), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_tracker_dead_events (error, event) "
                "VALUES (:error, CAST(:event AS jsonb))"
            ),
            rows,
        )


# ---------------------------------------------------------------- liveness

HEARTBEAT = """
INSERT INTO job_tracker_instances AS i (instance, host, pid, started_at, heartbeat_at,
    last_event_at, events_applied, errors, gaps, spool_events)
VALUES (%(instance)s, %(host)s, %(pid)s, %(started_at)s, now(), %(last_event_at)s,
        %(events_applied)s, %(errors)s, %(gaps)s, %(spool_events)s)
ON CONFLICT (instance) DO UPDATE SET
    heartbeat_at = now(), last_event_at = EXCLUDED.last_event_at,
    events_applied = EXCLUDED.events_applied, errors = EXCLUDED.errors,
    gaps = EXCLUDED.gaps, spool_events = EXCLUDED.spool_events
"""


def record_heartbeat(engine: Engine, instance: str, pid: int, started_at: datetime,
                     counters: dict[str, Any]) -> None:  # fmt: skip
    """Upsert this tracker's liveness row."""
    params = {"instance": instance, "host": socket.gethostname(), "pid": pid,
              "started_at": started_at, **counters}  # fmt: skip
    with translated(), engine.begin() as conn:
        conn.exec_driver_sql(HEARTBEAT, params)


def forget_instance(engine: Engine, instance: str) -> None:
    """Remove this tracker's liveness row on a clean stop, and rows dead for a week."""
    with translated(), engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM job_tracker_instances WHERE instance = :i "
                "OR heartbeat_at < now() - interval '7 days'"
            ),
            {"i": instance},
        )


LIST_INSTANCES = """
SELECT instance, host, pid, started_at, heartbeat_at, last_event_at, events_applied,
       errors, gaps, spool_events, EXTRACT(EPOCH FROM now() - heartbeat_at) AS age_seconds
FROM job_tracker_instances
ORDER BY heartbeat_at DESC
"""


def list_instances(engine: Engine) -> list[dict[str, Any]]:
    """Liveness rows of all trackers, freshest first."""
    with translated(), engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(LIST_INSTANCES))]


# ---------------------------------------------------------------- repair

NON_TERMINAL_PAGE = """
SELECT id FROM jobs
WHERE status IN ('PENDING', 'WAITING_FOR_REMOTE_WORKER', 'PROCESSING')
  AND start_date >= :since AND id > :after
ORDER BY id
LIMIT :limit
"""

PROCESSING_ON = "SELECT id FROM jobs WHERE status = 'PROCESSING' AND worker = :worker"


def non_terminal_jobs(engine: Engine, since: datetime, after: str, limit: int) -> list[str]:
    """A page of ids of jobs not yet terminal that started after `since`, in id order."""
    params = {"since": since, "after": after, "limit": limit}
    with translated(), engine.connect() as conn:
        return list(conn.execute(sa.text(NON_TERMINAL_PAGE), params).scalars())


def processing_jobs_on(engine: Engine, worker: str) -> list[str]:
    """Ids of jobs PROCESSING on `worker`."""
    with translated(), engine.connect() as conn:
        return list(conn.execute(sa.text(PROCESSING_ON), {"worker": worker}).scalars())
