"""The query and control commands of `job-tracker`: jobs, show, watch, active, stats, cancel,
cleanup. A thin layer over `tracker.service.JobService`, rendered with rich.

Errors (unknown job, invalid input, unreachable database) print one line on stderr,
`job-tracker: error: ...`, and exit 1 (3 for `watch`, whose 0/1/2 report the outcome).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
import orjson
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tracker import store
from tracker.cli import database_option, main
from tracker.config import DEFAULT_BROKER
from tracker.models import (
    DEFAULT_COUNT_LIMIT,
    InvalidRequest,
    JobDetail,
    JobEventResponse,
    JobPage,
    JobProgressUpdate,
    JobResponse,
    JobSearchRequest,
    JobStatistics,
    ServiceError,
    validation_message,
)
from tracker.service import JobService
from tracker.status import TERMINAL, JobPriority, JobStatus

EXIT_CODES = {JobStatus.FINISHED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 2}
WATCH_ERROR = 3
STATUS_STYLES = {
    JobStatus.PENDING: "blue",
    JobStatus.WAITING_FOR_REMOTE_WORKER: "magenta",
    JobStatus.PROCESSING: "cyan",
    JobStatus.FINISHED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.CANCELLED: "yellow",
}
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
RELATIVE_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
SPARKS = "▁▂▃▄▅▆▇█"
PIPE_WIDTH = 200  # piped output is for grep and files: do not squeeze it to 80 columns

user_option = click.option(
    "--user", "user_id", envvar="JOB_TRACKER_USER", show_envvar=True,
    help="Act as this user: other users' jobs are not found.",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


# ---------------------------------------------------------------- plumbing


def die(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr and exit."""
    click.echo(f"job-tracker: error: {message}", err=True)
    sys.exit(code)


@contextmanager
def job_service(database_url: str, celery_app: Any = None, code: int = 1) -> Iterator[JobService]:
    """A JobService whose expected errors end the command with one line, never a traceback."""
    try:
        with JobService(database_url, celery_app) as service:
            yield service
    except ValidationError as exc:
        die(validation_message(exc), code)
    except (ServiceError, store.StoreError) as exc:
        die(str(exc), code)


def console() -> Console:
    """A console on stdout (created per command, so test runners can capture it)."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=PIPE_WIDTH if wide else None)


def print_json(model: BaseModel) -> None:
    """A model as indented JSON on stdout."""
    click.echo(model.model_dump_json(indent=2))


def parse_when(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 date/time (naive: local time) or an age such as 30m, 12h, 7d."""
    if text is None:
        return None
    match = RELATIVE_AGE.match(text.strip().lower())
    if match:
        return datetime.now(UTC) - timedelta(seconds=int(match[1]) * AGE_UNITS[match[2]])
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"invalid {option} {text!r}: use ISO 8601 (2025-05-01, 2025-05-01T14:30, "
            "2025-05-01T14:30+02:00) or an age such as 30m, 12h, 7d"
        ) from None
    return value if value.tzinfo else value.astimezone()


# ---------------------------------------------------------------- formatting


def fmt_duration(seconds: float | None) -> str:
    """A short human duration: 850ms, 12.3s, 4m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 24 else f"{hours // 24}d{hours % 24:02d}h"


def fmt_age(moment: datetime, now: datetime) -> str:
    """How long ago, in the largest whole unit: 5s, 3m, 2h, 4d."""
    seconds = max(0.0, (now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def styled_status(status: JobStatus | None, short: bool = False) -> Text:
    """A status in its colour (`short`: WAITING for WAITING_FOR_REMOTE_WORKER, for lists)."""
    if status is None:
        return Text("-", style="dim")
    label = "WAITING" if short and status == JobStatus.WAITING_FOR_REMOTE_WORKER else status.value
    return Text(label, style=STATUS_STYLES[status])


def job_duration(job: JobResponse, now: datetime) -> Text:
    """The duration of an ended job, or the running time so far (dim) of an active one."""
    if job.duration_seconds is not None:
        return Text(fmt_duration(job.duration_seconds))
    running = (now - (job.started_at or job.start_date)).total_seconds()
    return Text(fmt_duration(running), style="dim italic")


def jobs_table(jobs: list[JobResponse], caption: str) -> Table:
    """The job list: id, task, status, %, summary, age, duration."""
    table = Table(caption=caption, caption_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))  # fmt: skip
    table.add_column("ID", no_wrap=True)
    # Only TASK and SUMMARY give way on a narrow terminal (their cells end in an ellipsis).
    table.add_column("TASK")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("SUMMARY", max_width=60)
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("DURATION", justify="right", no_wrap=True)
    now = datetime.now(UTC)
    for job in jobs:
        table.add_row(job.id, one_line(job.task_name or "-"),
                      styled_status(job.status, short=True), str(job.percentage),
                      one_line(job.summary or ""), fmt_age(job.start_date, now),
                      job_duration(job, now))  # fmt: skip
    return table


def one_line(text: str) -> Text:
    """A cell that is cut with an ellipsis rather than wrapped."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def page_caption(total: int, offset: int, shown: int, capped: bool = False) -> str:
    """'showing 1-50 of 123 jobs' (or 'of more than 10000 jobs'), or why nothing is shown."""
    if total == 0:
        return "no jobs match"
    count = f"more than {total}" if capped else str(total)
    if shown == 0:
        return f"no jobs at offset {offset} ({count} match)"
    return (
        f"showing {offset + 1}-{offset + shown} of {count} job{'s' if capped or total != 1 else ''}"
    )


def field_value(value: Any) -> Text | str:
    """A job field for the `show` table."""
    if value is None or value == {}:
        return Text("-", style="dim")
    if isinstance(value, JobStatus):
        return styled_status(value)
    if isinstance(value, datetime):
        return value.astimezone().isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)


def job_fields_table(job: JobResponse) -> Table:
    """Every field of a job, one per line."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name in JobResponse.model_fields:
        value = getattr(job, name)
        if name == "duration_seconds" and value is not None:
            value = f"{fmt_duration(value)} ({value:.3f} s)"
        table.add_row(name, field_value(value))
    return table


def history_table(history: list[JobEventResponse], start: datetime) -> Table:
    """The timeline: local time, time since the start, event, status, %, message, host."""
    table = Table(title="history", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    for name in ("TIME", "+", "EVENT", "STATUS", "%"):
        table.add_column(name, no_wrap=True, justify="right" if name in "+%" else "left")
    table.add_column("MESSAGE", overflow="fold", ratio=1)
    table.add_column("HOST", overflow="fold")
    for event in history:
        offset = (event.occurred_at - start).total_seconds()
        table.add_row(event.occurred_at.astimezone().strftime("%H:%M:%S.%f")[:-3],
                      fmt_duration(offset), event.event_type, styled_status(event.status),
                      "" if event.percentage is None else str(event.percentage),
                      event.message or "", event.hostname or "")  # fmt: skip
    return table


# ---------------------------------------------------------------- jobs, show, active


@main.command("jobs")
@click.option("--status", type=click.Choice([s.value for s in JobStatus], case_sensitive=False),
              help="Only jobs in this status.")  # fmt: skip
@click.option("--type", "document_type", help="Only jobs of this document type.")
@click.option("--priority", type=click.Choice([p.value for p in JobPriority],
              case_sensitive=False), help="Only jobs of this priority.")  # fmt: skip
@user_option
@click.option("--task", "task_name", help="Only jobs of this task name.")
@click.option("--since", help="Started at or after: ISO date/time (local) or an age (7d).")
@click.option("--until", help="Started at or before: ISO date/time (local) or an age (2h).")
@click.option("--limit", type=int, default=50, show_default=True, help="Jobs per page (1-1000).")
@click.option("--offset", type=int, default=0, show_default=True, help="Jobs to skip.")
@click.option(
    "--exact-total",
    is_flag=True,
    help=f"Count every match (by default counting stops after {DEFAULT_COUNT_LIMIT}).",
)
@json_option
@database_option
def jobs_command(database_url: str, as_json: bool, since: str | None, until: str | None,
                 exact_total: bool, **filters: Any) -> None:  # fmt: skip
    """List jobs, newest first, with the number of matches."""
    with job_service(database_url) as service:
        request = JobSearchRequest(
            date_from=parse_when(since, "--since"), date_to=parse_when(until, "--until"),
            count_limit=None if exact_total else DEFAULT_COUNT_LIMIT,
            **{k: v.upper() if k in ("status", "priority") and v else v
               for k, v in filters.items()},
        )  # fmt: skip
        page = service.search_page(request)
    if as_json:
        print_json(page)
        return
    caption = page_caption(page.total, request.offset, len(page.items), page.total_is_capped)
    console().print(jobs_table(page.items, caption))


@main.command("show")
@click.argument("job_id")
@user_option
@json_option
@database_option
def show_command(job_id: str, user_id: str | None, as_json: bool, database_url: str) -> None:
    """Every field of a job and its history timeline."""
    with job_service(database_url) as service:
        detail = JobDetail(job=service.get_job(job_id, user_id),
                           history=service.get_history(job_id, user_id))  # fmt: skip
    if as_json:
        print_json(detail)
        return
    out = console()
    out.print(job_fields_table(detail.job))
    out.print()
    out.print(history_table(detail.history, detail.job.start_date))


@main.command("active")
@user_option
@json_option
@database_option
def active_command(user_id: str | None, as_json: bool, database_url: str) -> None:
    """Jobs that are PENDING, WAITING_FOR_REMOTE_WORKER or PROCESSING."""
    with job_service(database_url) as service:
        items = service.get_active_jobs(user_id)
    if as_json:
        print_json(JobPage(total=len(items), items=items))
        return
    caption = f"{len(items)} active job{'s' if len(items) != 1 else ''}"
    console().print(jobs_table(items, caption))


# ---------------------------------------------------------------- watch


@main.command("watch")
@click.argument("job_id")
@user_option
@click.option("--timeout", type=float, envvar="JOB_TRACKER_WATCH_TIMEOUT", show_envvar=True,
              help="Give up (exit 3) after this many seconds.")  # fmt: skip
@database_option
def watch_command(job_id: str, user_id: str | None, timeout: float | None,
                  database_url: str) -> None:  # fmt: skip
    """Follow a job live (LISTEN job_updates) until it ends.

    Exit status: 0 FINISHED, 1 FAILED, 2 CANCELLED, 3 error or timeout.
    """
    out = console()
    try:
        with job_service(database_url, code=WATCH_ERROR) as service:
            updates = service.watch_job(job_id, user_id, timeout)
            final = render_live(updates, out) if out.is_terminal else render_lines(updates)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(EXIT_CODES[final.status])


def render_lines(updates: Iterable[JobProgressUpdate]) -> JobProgressUpdate:
    """One line per update (piped output, logs); returns the last update."""
    last = None
    for update in updates:
        stamp = update.timestamp.astimezone().strftime("%H:%M:%S")
        click.echo(f"{stamp} {update.status.value} {update.percentage}% {update.message}")
        last = update
    assert last is not None  # watch_job always yields the current state first
    return last


def render_live(updates: Iterable[JobProgressUpdate], out: Console) -> JobProgressUpdate:
    """A live progress bar with the status and summary; returns the last update."""
    columns = (TextColumn("{task.fields[status]}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("{task.description}"))  # fmt: skip
    last = None
    with Progress(*columns, console=out, transient=True) as progress:
        bar = progress.add_task("", total=100, status="")
        for update in updates:
            status = styled_status(update.status).markup
            progress.update(bar, completed=update.percentage, description=update.message,
                            status=status)  # fmt: skip
            last = update
    assert last is not None  # watch_job always yields the current state first
    out.print(Text.assemble(styled_status(last.status), f" {last.percentage}%  {last.message}"))
    return last


# ---------------------------------------------------------------- stats


@main.command("stats")
@user_option
@click.option("--days", type=int, default=30, show_default=True,
              help="Window: jobs started in the last N days.")  # fmt: skip
@json_option
@database_option
def stats_command(user_id: str | None, days: int, as_json: bool, database_url: str) -> None:
    """Counts, success rate, durations, queue wait, top failures and jobs per hour."""
    with job_service(database_url) as service:
        stats = service.get_job_statistics(user_id, days)
    if as_json:
        print_json(stats)
        return
    render_stats(stats, user_id, console())


def render_stats(stats: JobStatistics, user_id: str | None, out: Console) -> None:
    """The statistics as a headline and a few small tables."""
    scope = f"user {user_id}" if user_id else "all users"
    since = stats.since.astimezone().strftime("%Y-%m-%d %H:%M")
    title = f"Jobs started in the last {stats.window_days} days"
    out.print(f"[bold]{title}[/] (since {since}, {scope})")
    out.print(f"total {stats.total_jobs} · active {stats.active_jobs} · success rate "
              f"{stats.success_rate:.1%} · average duration "
              f"{fmt_duration(stats.average_duration_seconds)} · total processing time "
              f"{fmt_duration(stats.total_processing_time)}")  # fmt: skip
    wait = stats.queue_wait
    out.print(f"queue wait (sent → started): p50 {fmt_duration(wait.p50_seconds)} · p95 "
              f"{fmt_duration(wait.p95_seconds)} over {wait.count} started jobs")  # fmt: skip
    out.print(status_table(stats), type_table(stats), failures_table(stats))
    out.print(f"jobs per hour, last 48 h: {sparkline([h.jobs for h in stats.jobs_per_hour[-48:]])}")


def status_table(stats: JobStatistics) -> Table:
    """Jobs per status."""
    table = Table(title="by status", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("STATUS")
    table.add_column("JOBS", justify="right")
    for status, count in stats.jobs_by_status.items():
        table.add_row(styled_status(JobStatus(status)), str(count))
    return table


def type_table(stats: JobStatistics) -> Table:
    """Jobs per document type (task name without one), with finished-job percentiles."""
    table = Table(title="by type", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for name in ("TYPE", "JOBS", "FINISHED", "P50", "P95"):
        table.add_column(name, justify="left" if name == "TYPE" else "right")
    for kind, count in stats.jobs_by_type.items():
        d = stats.duration_by_type.get(kind)
        table.add_row(kind, str(count), str(d.count if d else 0),
                      fmt_duration(d.p50_seconds if d else None),
                      fmt_duration(d.p95_seconds if d else None))  # fmt: skip
    return table


def failures_table(stats: JobStatistics) -> Table:
    """The most frequent failure exceptions."""
    table = Table(
        title="top failures", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD
    )
    table.add_column("EXCEPTION")
    table.add_column("JOBS", justify="right")
    table.add_column("LATEST", overflow="ellipsis", no_wrap=True, max_width=60)
    for failure in stats.top_failures:
        table.add_row(failure.exception, str(failure.count), failure.example or "")
    return table


def sparkline(counts: list[int]) -> str:
    """Counts as a line of block characters, with the peak."""
    peak = max(counts, default=0)
    if peak == 0:
        return "no jobs"
    blocks = "".join(SPARKS[round(c / peak * (len(SPARKS) - 1))] for c in counts)
    return f"{blocks} (peak {peak}/h)"


# ---------------------------------------------------------------- cancel, cleanup


def load_celery_app(broker_url: str, app: str | None) -> Any:
    """The Celery app revokes are sent through, as `listen` builds it."""
    from tracker.config import ListenSettings
    from tracker.intake import build_app

    try:
        return build_app(ListenSettings(broker_url=broker_url, app=app))
    except Exception as exc:  # find_app raises import errors of the user's module
        die(f"cannot load Celery app {app!r}: {exc}")


@main.command("cancel")
@click.argument("job_id")
@user_option
@click.option("--terminate", is_flag=True,
              help="Also kill the worker process running the task (SIGTERM).")  # fmt: skip
@click.option("--broker", "broker_url", envvar="CELERY_BROKER_URL", default=DEFAULT_BROKER,
              show_default=True, show_envvar=True, help="Celery broker URL.")  # fmt: skip
@click.option("--app", envvar="CELERY_APP", show_envvar=True,
              help="Celery app (as for `celery -A`); its broker settings are used.")  # fmt: skip
@database_option
def cancel_command(job_id: str, user_id: str | None, terminate: bool, broker_url: str,
                   app: str | None, database_url: str) -> None:  # fmt: skip
    """Revoke a pending or running job and mark it CANCELLED at once."""
    with job_service(database_url, load_celery_app(broker_url, app)) as service:
        job = service.cancel_job(job_id, user_id, terminate)
    how = "revoke sent with terminate=SIGTERM" if terminate else "revoke sent"
    click.echo(f"{job.id}: {job.status.value} - {job.summary} ({how})")


@main.command("cleanup")
@click.option("--older-than-days", "days", type=int, required=True,
              help="Delete jobs that ended more than N days ago.")  # fmt: skip
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(sorted(s.value for s in TERMINAL), case_sensitive=False),
              help="Only jobs in this status (repeatable; default: all terminal).")  # fmt: skip
@click.option("--batch-size", type=int, default=1000, show_default=True,
              help="Jobs deleted per transaction (keeps the listener unblocked).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only count the jobs that would be deleted.")
@database_option
def cleanup_command(days: int, statuses: tuple[str, ...], batch_size: int, dry_run: bool,
                    database_url: str) -> None:  # fmt: skip
    """Delete old FINISHED, FAILED and CANCELLED jobs with their history."""
    chosen = frozenset(s.upper() for s in statuses) or frozenset(s.value for s in TERMINAL)
    with job_service(database_url) as service:
        if dry_run:
            count = service.count_old_jobs(days, chosen)
        else:
            count = service.cleanup_old_jobs(days, chosen, batch_size)
    verb = "would delete" if dry_run else "deleted"
    which = ", ".join(sorted(chosen))
    click.echo(f"{verb} {count} job{'s' if count != 1 else ''} ({which}) "
               f"that ended more than {days} days ago")  # fmt: skip
