"""`job-tracker demo`: see job-tracker work before you have a broker or a database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tracker.cli import main
from tracker.cli_query import console
from tracker.demo import MIN_JOBS, DemoError, DemoOptions, run_demo, stop_kept
from tracker.log import configure_logging
from tracker.models import ServiceError
from tracker.store import StoreError


def demo_dir(data_dir: Path | None) -> Path:
    """--data-dir, or $XDG_DATA_HOME/job-tracker/demo."""
    if data_dir is not None:
        return data_dir
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "job-tracker" / "demo"


def quiet_logs(ctx: click.Context) -> None:
    """Only warnings from our own loggers, unless --log-level was given: the screen is the demo."""
    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("log_level") in (
        click.core.ParameterSource.DEFAULT,
        None,
    ):
        configure_logging("WARNING", parent.params.get("log_json"))


@main.command("demo")
@click.option("--jobs", type=click.IntRange(MIN_JOBS, 1000), default=20, show_default=True,
              help="Celery tasks to submit: document pipelines (4 tasks each), a corrupt file, "
                   "a retried fetch, a fetch that exhausts its retries, an OCR run cancelled "
                   "while running, and lone jobs on the remote gpu queue.")  # fmt: skip
@click.option("--no-live", is_flag=True,
              help="Plain lines instead of the live table (for CI and pipes).")  # fmt: skip
@click.option("--keep", is_flag=True,
              help="Leave the embedded PostgreSQL and Redis running, for psql.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(10, 3600), default=180.0, show_default=True,
              help="Seconds every job has to reach its terminal state.")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="JOB_TRACKER_DEMO_DIR", show_envvar=True,
              help="Embedded servers' files, logs and spool "
                   "[default: $XDG_DATA_HOME/job-tracker/demo].")  # fmt: skip
@click.option("--stop", is_flag=True,
              help="Only stop the embedded servers a --keep run left running.")  # fmt: skip
@click.pass_context
def demo_command(ctx: click.Context, jobs: int, no_live: bool, keep: bool, timeout: float,
                 data_dir: Path | None, stop: bool) -> None:  # fmt: skip
    """Run a real pipeline end to end and watch job-tracker track it.

    PostgreSQL and Redis come from DATABASE_URL and CELERY_BROKER_URL when they are set,
    else embedded ones start (pip install 'job-tracker[demo]'). Then: init-db, a
    `celery -A examples.ingest worker -E`, `job-tracker listen`, and a producer that
    submits a mix of jobs. Exits 0 when every job reached the terminal state it should.
    Run it from a checkout: the worker imports the example app examples/ingest.py.
    """
    quiet_logs(ctx)
    try:
        directory = demo_dir(data_dir)
        if stop:
            stopped = stop_kept(directory)
            click.echo(f"demo: stopped {' and '.join(stopped) or 'nothing (none running)'}")
            return
        out = console()
        live = not no_live and out.is_terminal
        options = DemoOptions(jobs=jobs, live=live, keep=keep, timeout=timeout, data_dir=directory)
        summary = run_demo(options, out)
    except (DemoError, ServiceError, StoreError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        click.echo("demo: interrupted; every process it started has been stopped", err=True)
        sys.exit(130)
    click.echo(summary)


def fail(message: str) -> None:
    """The demo failed: one clear message on stderr, exit 1."""
    click.echo(f"demo: error: {message}", err=True)
    sys.exit(1)
