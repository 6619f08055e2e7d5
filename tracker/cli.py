"""The `job-tracker` command line: a thin layer over the daemon and the store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tracker import __version__, store
from tracker.config import DEFAULT_BROKER, DEFAULT_DATABASE, ListenSettings
from tracker.log import configure_logging

database_option = click.option(
    "--database", "database_url", envvar="DATABASE_URL", default=DEFAULT_DATABASE,
    show_default=True, show_envvar=True, help="PostgreSQL URL (password never logged).",
)  # fmt: skip


def fail(message: str) -> None:
    """Print one clear line on stderr and exit 1."""
    click.echo(f"job-tracker: error: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="job-tracker")
@click.option("--log-level", envvar="JOB_TRACKER_LOG_LEVEL", default="INFO", show_default=True,
              show_envvar=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
              case_sensitive=False), help="Log level.")  # fmt: skip
@click.option("--log-json/--log-console", envvar="JOB_TRACKER_LOG_JSON", default=None,
              show_envvar=True,
              help="JSON log lines (default: when stderr is not a TTY).")  # fmt: skip
def main(log_level: str, log_json: bool | None) -> None:
    """Durable job tracking for Celery: events in, job rows in PostgreSQL out."""
    configure_logging(log_level, log_json)


@main.command("schema")
def schema_command() -> None:
    """Print schema.sql (the public schema contract)."""
    click.echo(store.schema_sql(), nl=False)


@main.command("init-db")
@database_option
@click.option("--create/--no-create", default=True, show_default=True,
              help="Create the database when it does not exist (needs CREATEDB).")  # fmt: skip
def init_db_command(database_url: str, create: bool) -> None:
    """Create the database if allowed and apply schema.sql idempotently."""
    try:
        if create and store.ensure_database(database_url):
            click.echo(f"created database {store.safe_url(database_url)}")
        engine = store.create_engine(database_url)
        version = store.apply_schema(engine)
        engine.dispose()
    except store.StoreError as exc:
        fail(str(exc))
    click.echo(f"schema version {version} applied to {store.safe_url(database_url)}")


def _split_queues(_ctx: Any, _param: Any, value: tuple[str, ...]) -> frozenset[str]:
    """Accept repeated options and comma lists (from the environment variable)."""
    return frozenset(q.strip() for item in value for q in item.split(",") if q.strip())


@main.command("listen")
@click.option("--broker", "broker_url", envvar="CELERY_BROKER_URL", default=DEFAULT_BROKER,
              show_default=True, show_envvar=True, help="Celery broker URL.")  # fmt: skip
@click.option("--app", envvar="CELERY_APP", show_envvar=True,
              help="Celery app (as for `celery -A`); its broker settings are used.")  # fmt: skip
@database_option
@click.option("--remote-queue", "remote_queues", multiple=True, callback=_split_queues,
              envvar="JOB_TRACKER_REMOTE_QUEUES", show_envvar=True,
              help="Queue served by remote workers (repeatable; env: comma list). Jobs sent "
                   "there are WAITING_FOR_REMOTE_WORKER until a worker receives them.")  # fmt: skip
@click.option("--queue", envvar="JOB_TRACKER_QUEUE", show_envvar=True,
              help="AMQP only: consume from this durable queue and acknowledge after commit "
                   "(at-least-once). Default: a private auto-delete queue.")  # fmt: skip
@click.option("--event-exchange", envvar="CELERY_EVENT_EXCHANGE", show_envvar=True,
              help="Celery's event exchange, if your apps changed `event_exchange` "
                   "[default: celeryev].")  # fmt: skip
@click.option("--intake", type=click.Choice(["auto", "kombu"]), default="auto",
              envvar="JOB_TRACKER_INTAKE", show_default=True, show_envvar=True,
              help="auto: read plain Redis brokers' event fanout directly (fast path); "
                   "kombu: always consume through kombu, like Celery's EventReceiver.")  # fmt: skip
@click.option("--batch-size", envvar="JOB_TRACKER_BATCH_SIZE", default=2000, show_default=True,
              show_envvar=True, type=click.IntRange(1, 100_000),
              help="Most events written in one transaction.")  # fmt: skip
@click.option("--flush-interval", envvar="JOB_TRACKER_FLUSH_INTERVAL", default=0.1,
              show_default=True, show_envvar=True, type=click.FloatRange(0.001, 10),
              help="Seconds an event may wait for its batch to fill.")  # fmt: skip
@click.option("--prefetch", envvar="JOB_TRACKER_PREFETCH", default=4000, show_default=True,
              show_envvar=True, type=click.IntRange(1, 65_535),
              help="AMQP unacknowledged messages in flight (with --queue).")  # fmt: skip
@click.option("--stats-interval", envvar="JOB_TRACKER_STATS_INTERVAL", default=30.0,
              show_default=True, show_envvar=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between summary log lines.")  # fmt: skip
@click.option("--no-events-warning-after", "no_task_events_warning",
              envvar="JOB_TRACKER_NO_EVENTS_WARNING", default=60.0, show_default=True,
              show_envvar=True, type=click.FloatRange(0.5, 86_400),
              help="Warn when a busy worker sends no task events for this many seconds "
                   "(it runs without -E).")  # fmt: skip
@click.option("--spool-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="JOB_TRACKER_SPOOL_DIR", show_envvar=True,
              help="Where events wait on disk while PostgreSQL is away or slow [default: "
                   "$XDG_DATA_HOME/job-tracker/spool]. One tracker per directory.")  # fmt: skip
@click.option("--buffer-messages", envvar="JOB_TRACKER_BUFFER_MESSAGES", default=20_000,
              show_default=True, show_envvar=True, type=click.IntRange(10, 10_000_000),
              help="Messages held in memory before spilling to the spool.")  # fmt: skip
@click.option("--result-backend", envvar="CELERY_RESULT_BACKEND", show_envvar=True,
              help="Celery result backend used to repair jobs after an event gap or a "
                   "restart (default: the --app's backend, if any).")  # fmt: skip
@click.option("--reconcile-lookback-hours", envvar="JOB_TRACKER_RECONCILE_LOOKBACK_HOURS",
              default=24.0, show_default=True, show_envvar=True,
              type=click.FloatRange(0.01, 24 * 365),
              help="Non-terminal jobs started this recently are checked in the result "
                   "backend after a gap or restart.")  # fmt: skip
def listen_command(**options: Any) -> None:
    """Track Celery events into PostgreSQL until SIGTERM/SIGINT (flushes, exits 0)."""
    from tracker.daemon import listen
    from tracker.spool import SpoolLockedError

    if options.get("spool_dir") is None:
        options.pop("spool_dir", None)
    try:
        settings = ListenSettings(**options)
    except ValueError as exc:
        fail(str(exc).splitlines()[0])
    try:
        sys.exit(listen(settings))
    except (store.SchemaError, SpoolLockedError, OSError) as exc:
        fail(str(exc))


# The query and control commands (jobs, show, watch, active, stats, cancel, cleanup).
from tracker import cli_query  # noqa: E402,F401


@main.command("health")
@database_option
@click.option("--max-age", envvar="JOB_TRACKER_HEALTH_MAX_AGE", default=30.0, show_default=True,
              show_envvar=True, type=click.FloatRange(0.1, 86_400),
              help="Seconds after its last heartbeat when a tracker counts as dead.")  # fmt: skip
def health_command(database_url: str, max_age: float) -> None:
    """Show tracker liveness; exit 1 when no tracker has a fresh heartbeat (liveness probe)."""
    try:
        engine = store.create_engine(database_url)
        instances = store.list_instances(engine)
        engine.dispose()
    except store.StoreError as exc:
        fail(str(exc))
    for row in instances:
        state = "alive" if row["age_seconds"] <= max_age else "stale"
        click.echo(
            f"{state:5}  {row['instance']}  heartbeat {row['age_seconds']:.1f}s ago  "
            f"last event {_ago(row['last_event_at'])}  applied {row['events_applied']}  "
            f"errors {row['errors']}  gaps {row['gaps']}  spooled {row['spool_events']}"
        )
    if not instances:
        fail("no job-tracker listener has recorded a heartbeat")
    if instances[0]["age_seconds"] > max_age:
        fail(f"newest tracker heartbeat is {instances[0]['age_seconds']:.0f}s old (> {max_age:g}s)")


def _ago(value: Any) -> str:
    """'never' or an ISO timestamp."""
    return "never" if value is None else value.isoformat(timespec="seconds")


# `job-tracker demo`: the whole pipeline on embedded (or your) PostgreSQL and Redis.
from tracker import cli_demo  # noqa: E402,F401
