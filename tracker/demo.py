"""`job-tracker demo`: the whole pipeline, for real, in one command.

PostgreSQL and Redis (the ones DATABASE_URL / CELERY_BROKER_URL name, else embedded ones
from `tracker.embedded`), `job-tracker init-db`, a `celery -A examples.ingest worker -E`
process, a `job-tracker listen --remote-queue gpu` process, and a producer (this process)
that submits a mix of jobs and cancels one while it runs. The jobs are shown as the
listener writes them to PostgreSQL; the demo ends when every submitted job is terminal.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import tracker
from tracker.cli_query import render_stats, styled_status
from tracker.log import get_logger
from tracker.models import MAX_LIMIT, JobNotCancellable, JobResponse, JobSearchRequest
from tracker.service import JobService
from tracker.status import JobStatus

if TYPE_CHECKING:
    from tracker.embedded import EmbeddedPostgres, EmbeddedRedis

DEMO_DATABASE = "job_tracker"
REMOTE_QUEUE = "gpu"
LOCAL_QUEUE = "celery"
FIXED_JOBS = 4  # ocr (cancelled), corrupt (fails), flaky (retries), dead (exhausts retries)
PIPELINE_JOBS = 4  # extract -> chunk -> embed (remote gpu queue) -> store
MIN_JOBS = FIXED_JOBS + PIPELINE_JOBS
OCR_SECONDS = 20.0
CANCEL_AT_PERCENT = 20  # cancel the OCR run once its progress bar has visibly moved
POLL_SECONDS = 0.2
STOP_SECONDS = 15.0
BAR_STYLES = {
    JobStatus.FINISHED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "yellow",
}
DOCUMENTS = [
    ("contract", "pdf", "alice", "HIGH"),
    ("invoice", "pdf", "bob", "NORMAL"),
    ("handbook", "docx", "carol", "LOW"),
    ("press-release", "html", "alice", "NORMAL"),
    ("minutes", "docx", "dave", "URGENT"),
]

log = get_logger("demo")


class DemoError(Exception):
    """The demo could not finish; the message says what happened and where to look."""


class DemoInterrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: clean up everything, then exit."""


@dataclass(frozen=True)
class DemoOptions:
    """What `job-tracker demo` was asked to do."""

    jobs: int
    live: bool
    keep: bool
    timeout: float
    data_dir: Path


@dataclass(frozen=True)
class Services:
    """Where PostgreSQL and Redis are, and the embedded servers this run manages."""

    database_url: str
    broker_url: str
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None


@dataclass(frozen=True)
class PlannedJob:
    """One Celery task the producer submitted, and the terminal state it must reach."""

    id: str
    task: str
    what: str
    expected: JobStatus


# ---------------------------------------------------------------- processes


class Child:
    """A subprocess in its own session (Ctrl-C reaches only us), output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path) -> None:  # fmt: skip
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)  # fmt: skip

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 12) -> str:
        """The last lines it printed."""
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise DemoError, with the end of its log, if it has exited."""
        code = self.popen.poll()
        if code is not None:
            raise DemoError(f"the {self.name} exited with status {code} ({self.log_path}):\n"
                            f"{self.tail()}")  # fmt: skip

    def stop(self) -> None:
        """SIGTERM (the listener flushes, the worker finishes), then SIGKILL if it hangs."""
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_SECONDS)
        log.debug("child_stopped", name=self.name, status=self.popen.returncode)


@contextmanager
def running(name: str, args: list[str], env: dict[str, str], log_path: Path,
            cwd: Path) -> Iterator[Child]:  # fmt: skip
    """A child process for the duration of a with-block, always stopped at its end."""
    child = Child(name, args, env, log_path, cwd)
    try:
        yield child
    finally:
        child.stop()


def wait_for_text(child: Child, text: str, timeout: float) -> None:
    """Wait until the child's log contains `text` (or it dies, or time runs out)."""
    deadline = time.monotonic() + timeout
    while text not in child.output():
        child.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(f"the {child.name} did not get ready in {timeout:.0f}s; the end of "
                            f"{child.log_path}:\n{child.tail()}")  # fmt: skip
        time.sleep(0.1)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM handler."""
    raise DemoInterrupted


@contextmanager
def cleanup_stack() -> Iterator[ExitStack]:
    """An ExitStack that SIGTERM unwinds like Ctrl-C, and that no signal can cut short."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with ExitStack() as stack:
            try:
                yield stack
            finally:
                # A second Ctrl-C while we stop things must not leave a process behind.
                for sig in signals:
                    signal.signal(sig, signal.SIG_IGN)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def job_tracker_argv() -> list[str]:
    """The argv of this job-tracker's console script (or the module, without one)."""
    script = Path(sys.executable).parent / "job-tracker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from tracker.cli import main; sys.exit(main())"]


def examples_root() -> Path:
    """The checkout holding examples/ingest.py (the worker imports `examples.ingest`)."""
    for candidate in (Path(tracker.__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "examples" / "ingest.py").is_file():
            return candidate
    raise DemoError("the demo runs the example app examples/ingest.py: run it from a checkout "
                    "of job-tracker installed with pip install -e '.[demo]'")  # fmt: skip


def child_env(services: Services, root: Path) -> dict[str, str]:
    """Environment of the worker and the listener: our services, the example app importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_APP", "INGEST_NO_EVENTS")}
    path = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.update(CELERY_BROKER_URL=services.broker_url, DATABASE_URL=services.database_url,
               PYTHONPATH=path, JOB_TRACKER_LOG_JSON="true", PYTHONUNBUFFERED="1")  # fmt: skip
    env.setdefault("INGEST_STEP_DELAY", "0.25")  # slow enough to watch the bars move
    return env


# ---------------------------------------------------------------- services


def start_services(options: DemoOptions, stack: ExitStack, say: Callable[[str], None]) -> Services:
    """The configured PostgreSQL and Redis, or embedded ones (stopped at the end unless kept)."""
    database_url = os.environ.get("DATABASE_URL")
    broker_url = os.environ.get("CELERY_BROKER_URL")
    postgres = redis = None
    if not database_url or not broker_url:
        try:
            from tracker import embedded
        except ImportError as exc:
            raise DemoError(f"{exc} (or set DATABASE_URL and CELERY_BROKER_URL)") from exc
        try:
            if not database_url:
                postgres = embedded.start_postgres(options.data_dir / "postgres")
                if not options.keep:
                    stack.callback(postgres.stop)
                embedded.reset_database(postgres, DEMO_DATABASE)  # each run starts empty
                database_url = postgres.url(DEMO_DATABASE)
            if not broker_url:
                redis = embedded.start_redis(options.data_dir / "redis")
                if not options.keep:
                    stack.callback(redis.stop)
                broker_url = redis.url(0)
        except embedded.EmbeddedError as exc:
            raise DemoError(str(exc)) from exc
    say(f"PostgreSQL {'(embedded) ' if postgres else ''}{database_url}")
    say(f"Redis      {'(embedded) ' if redis else ''}{mask(broker_url)}")
    return Services(database_url, broker_url, postgres, redis)


def mask(url: str) -> str:
    """A broker URL with its password masked."""
    from tracker.config import mask_broker_url

    return mask_broker_url(url)


def init_db(database_url: str, say: Callable[[str], None]) -> None:
    """`job-tracker init-db`, as a user would run it."""
    result = subprocess.run([*job_tracker_argv(), "init-db", "--database", database_url],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    if result.returncode != 0:
        raise DemoError(f"job-tracker init-db failed:\n{result.stderr.strip()}")
    for line in result.stdout.splitlines():
        say(f"init-db    {line}")


class Processes:
    """Starts the demo's child processes on one ExitStack, so that every one is stopped."""

    def __init__(self, options: DemoOptions, services: Services, stack: ExitStack) -> None:
        self.root = examples_root()
        self.env = child_env(services, self.root)
        self.logs = options.data_dir / "logs"
        self.stack = stack
        self.children: list[Child] = []

    def start(self, name: str, args: list[str], log_name: str) -> Child:
        """Start a child; the stack stops children in reverse order of their start."""
        child = self.stack.enter_context(running(name, args, self.env, self.logs / log_name,
                                                 self.root))  # fmt: skip
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        """Raise DemoError if any child has exited."""
        for child in self.children:
            child.check_alive()


def worker_argv(name: str, queues: str, concurrency: int) -> list[str]:
    """A real `celery -A examples.ingest worker -E` for these queues."""
    return [sys.executable, "-m", "celery", "-A", "examples.ingest", "worker", "-E", "-Q", queues,
            "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO",
            "--without-mingle", "--without-gossip"]  # fmt: skip


def start_processes(options: DemoOptions, processes: Processes, say: Callable[[str], None]) -> None:
    """The listener and the local worker, both ready (the listener subscribed before any job)."""
    listen = [*job_tracker_argv(), "listen", "--remote-queue", REMOTE_QUEUE,
              "--spool-dir", str(options.data_dir / "spool")]  # fmt: skip
    # Listener first: the stack stops the workers first, then the listener flushes.
    listener = processes.start("listener", listen, "listen.log")
    worker = processes.start("worker", worker_argv("demo", LOCAL_QUEUE, 3), "worker.log")
    wait_for_text(listener, '"consuming"', 60)
    say(f"listener   job-tracker listen --remote-queue {REMOTE_QUEUE}  (log {listener.log_path})")
    wait_for_text(worker, " ready.", 60)
    say(f"worker     celery -A examples.ingest worker -E -Q {LOCAL_QUEUE}  (log {worker.log_path})")


class RemoteWorker:
    """Starts the worker of the remote gpu queue once a job is seen waiting for one."""

    def __init__(self, processes: Processes, plan: list[PlannedJob], view: View) -> None:
        self.processes = processes
        self.remote_ids = [job.id for job in plan if job.task == "embed"]
        self.view = view
        self.started = False

    def maybe_start(self, rows: dict[str, JobResponse]) -> None:
        """Start it when a job is WAITING_FOR_REMOTE_WORKER (the listener's --remote-queue)."""
        wait = JobStatus.WAITING_FOR_REMOTE_WORKER
        waiting = [i for i in self.remote_ids if i in rows and rows[i].status == wait]
        if self.started or not waiting:
            return
        self.started = True
        self.processes.start("remote worker", worker_argv("gpu", REMOTE_QUEUE, 2), "gpu-worker.log")
        self.view.note(f"{waiting[0][:8]} waits for a remote worker: starting one "
                       f"(celery -A examples.ingest worker -E -Q {REMOTE_QUEUE})")  # fmt: skip


def load_example_app(services: Services) -> Any:
    """The example module `examples.ingest`, its app pointed at our broker."""
    root = str(examples_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    ingest = importlib.import_module("examples.ingest")
    ingest.app.conf.broker_url = services.broker_url
    return ingest


# ---------------------------------------------------------------- the producer


def chain_ids(result: Any) -> list[str]:
    """Task ids of a chain, first task first (a chain's result links to its parents)."""
    ids: list[str] = []
    while result is not None:
        ids.append(result.id)
        result = result.parent
    return ids[::-1]


def submit_pipeline(ingest: Any, n: int) -> list[PlannedJob]:
    """One document through extract -> chunk -> embed (remote gpu queue) -> store."""
    stem, kind, user, priority = DOCUMENTS[n % len(DOCUMENTS)]
    name = f"{stem}-{n + 1:03d}.{kind}"
    result = ingest.ingest(document_id=f"doc-{n + 1:03d}", document_name=name,
                           document_type=kind, user_id=user, priority=priority)  # fmt: skip
    steps = ("extract", "chunk", "embed", "store")
    return [PlannedJob(task_id, step, name + (" → gpu queue" if step == "embed" else ""),
                       JobStatus.FINISHED)
            for task_id, step in zip(chain_ids(result), steps, strict=True)]  # fmt: skip


def submit_remote(ingest: Any, n: int) -> PlannedJob:
    """A lone embedding job on the remote gpu queue (WAITING_FOR_REMOTE_WORKER until taken)."""
    doc = {"document_id": f"vec-{n + 1:03d}", "pages": 2, "chunks": 8}
    result = ingest.embed.apply_async(args=[doc])
    return PlannedJob(result.id, "embed", f"vectors-{n + 1:03d} → gpu queue", JobStatus.FINISHED)


def submit_all(ingest: Any, jobs: int) -> list[PlannedJob]:
    """Submit `jobs` Celery tasks: the four special cases, then pipelines and remote jobs."""
    # The OCR run goes first so that it is running (and can be cancelled) early.
    ocr = ingest.ocr.apply_async(kwargs={"document_id": "scan-0001", "seconds": OCR_SECONDS})
    corrupt = ingest.extract.apply_async(kwargs={
        "document_id": "doc-bad", "document_name": "corrupt.pdf", "document_type": "corrupt",
        "user_id": "bob", "priority": "HIGH"})  # fmt: skip
    flaky = ingest.fetch_remote.apply_async(kwargs={"url": "https://files.example/flaky.pdf"})
    dead = ingest.fetch_unavailable.apply_async(kwargs={"url": "https://files.example/gone.pdf"})
    plan = [
        PlannedJob(ocr.id, "ocr", "scan-0001 (cancelled while running)", JobStatus.CANCELLED),
        PlannedJob(corrupt.id, "extract", "corrupt.pdf (a bad file)", JobStatus.FAILED),
        PlannedJob(flaky.id, "fetch_remote", "flaky source (retried once)", JobStatus.FINISHED),
        PlannedJob(dead.id, "fetch_unavailable", "dead source (no retries left)", JobStatus.FAILED),
    ]
    pipelines, singles = divmod(jobs - FIXED_JOBS, PIPELINE_JOBS)
    for n in range(pipelines):
        plan += submit_pipeline(ingest, n)
    plan += [submit_remote(ingest, n) for n in range(singles)]
    log.debug("jobs_submitted", jobs=len(plan))
    return plan


# ---------------------------------------------------------------- tracking


class View(Protocol):
    """How progress is shown: a live table, or plain lines."""

    def update(self, plan: list[PlannedJob], rows: dict[str, JobResponse]) -> None:
        """Show the current state of the submitted jobs."""

    def note(self, message: str) -> None:
        """Show a one-off message."""


def fetch_rows(service: JobService, ids: set[str], since: datetime) -> dict[str, JobResponse]:
    """The current rows of our jobs (others' jobs in the same window are skipped)."""
    rows: dict[str, JobResponse] = {}
    offset = 0
    while True:
        request = JobSearchRequest(date_from=since, limit=MAX_LIMIT, offset=offset)
        page, total = service.search_jobs(request)
        rows.update((job.id, job) for job in page if job.id in ids)
        offset += len(page)
        if not page or offset >= total:
            return rows


class Canceller:
    """Cancels the OCR job (revoke with terminate) once it has been running for a while."""

    def __init__(self, service: JobService, job: PlannedJob, view: View) -> None:
        self.service = service
        self.job = job
        self.view = view
        self.done = False

    def maybe_cancel(self, rows: dict[str, JobResponse]) -> None:
        """Cancel when the job is PROCESSING at CANCEL_AT_PERCENT or more."""
        row = rows.get(self.job.id)
        if self.done or row is None or row.status != JobStatus.PROCESSING:
            return
        if row.percentage < CANCEL_AT_PERCENT:
            return
        self.done = True
        try:
            job = self.service.cancel_job(self.job.id, terminate=True)
        except JobNotCancellable as exc:
            self.view.note(f"could not cancel {self.job.id}: {exc}")
            return
        self.view.note(f"cancelled {job.id[:8]} (ocr, running at {row.percentage}%) with "
                       "JobService.cancel_job(terminate=True)")  # fmt: skip


def unfinished(plan: list[PlannedJob], rows: dict[str, JobResponse]) -> list[str]:
    """Descriptions of the submitted jobs that are not terminal yet."""
    return [f"{job.id[:8]} {job.task} ({rows[job.id].status.value if job.id in rows else 'unseen'})"
            for job in plan if job.id not in rows or not rows[job.id].terminal]  # fmt: skip


def track(plan: list[PlannedJob], service: JobService, view: View, processes: Processes,
          timeout: float) -> dict[str, JobResponse]:  # fmt: skip
    """Show the jobs until every one is terminal; on the way, cancel the OCR run and start
    the remote worker when a job waits for one."""
    ids = {job.id for job in plan}
    since = datetime.now(UTC) - timedelta(minutes=5)
    canceller = Canceller(service, next(j for j in plan if j.task == "ocr"), view)
    remote = RemoteWorker(processes, plan, view)
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch_rows(service, ids, since)
        view.update(plan, rows)
        canceller.maybe_cancel(rows)
        remote.maybe_start(rows)
        pending = unfinished(plan, rows)
        if not pending:
            return rows
        processes.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s: {len(pending)} of {len(plan)} jobs "
                            f"not in a terminal state: {', '.join(pending[:10])}")  # fmt: skip
        time.sleep(POLL_SECONDS)


def check_outcomes(plan: list[PlannedJob], rows: dict[str, JobResponse]) -> None:
    """Every job must have ended the way the demo planned it."""
    wrong = [f"{job.id[:8]} {job.task} ended {rows[job.id].status.value}, expected "
             f"{job.expected.value} ({rows[job.id].summary})"
             for job in plan if rows[job.id].status != job.expected]  # fmt: skip
    if wrong:
        raise DemoError("jobs ended in an unexpected state: " + "; ".join(wrong))


def summary_line(rows: dict[str, JobResponse]) -> str:
    """`demo: N jobs tracked to a terminal state (F finished, X failed, C cancelled)`."""
    counts = Counter(row.status for row in rows.values())
    return (f"demo: {len(rows)} jobs tracked to a terminal state ("
            f"{counts[JobStatus.FINISHED]} finished, {counts[JobStatus.FAILED]} failed, "
            f"{counts[JobStatus.CANCELLED]} cancelled)")  # fmt: skip


# ---------------------------------------------------------------- views


def one_line(text: str) -> Text:
    """A cell cut with an ellipsis rather than wrapped."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def short_task(task: str | None) -> str:
    """Task name without the example module's prefix."""
    return (task or "-").removeprefix("examples.ingest.")


def progress_cell(row: JobResponse) -> Table:
    """A progress bar and its percentage, coloured by outcome."""
    style = BAR_STYLES.get(row.status, "cyan")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=100, completed=row.percentage, width=14, complete_style=style,
                             finished_style=style),
                 Text(f"{row.percentage:>3}%"))  # fmt: skip
    return grid


def visible_jobs(plan: list[PlannedJob], rows: dict[str, JobResponse],
                 limit: int) -> list[PlannedJob]:  # fmt: skip
    """All jobs when they fit; else the active ones first, then the latest to end."""
    if len(plan) <= limit:
        return plan
    active = [j for j in plan if j.id not in rows or not rows[j.id].terminal]
    ended = [j for j in plan if j.id in rows and rows[j.id].terminal]
    ended.sort(key=lambda j: rows[j.id].end_date or rows[j.id].updated_at, reverse=True)
    return (active + ended)[:limit]


def headline(plan: list[PlannedJob], rows: dict[str, JobResponse], elapsed: float) -> str:
    """`20 jobs · 12.3s · 3 processing · 15 finished ...`."""
    counts = Counter(rows[j.id].status.value.lower() if j.id in rows else "unseen" for j in plan)
    parts = " · ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
    return f"[bold]job-tracker demo[/]  {len(plan)} jobs · {elapsed:.1f}s · {parts}"


def jobs_table(plan: list[PlannedJob], rows: dict[str, JobResponse], limit: int) -> Table:
    """The submitted jobs as PostgreSQL has them now."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for name in ("JOB", "TASK", "WHAT", "QUEUE", "STATUS", "PROGRESS"):
        table.add_column(name, no_wrap=True)
    table.add_column("SUMMARY", ratio=1)
    shown = visible_jobs(plan, rows, limit)
    for job in shown:
        row = rows.get(job.id)
        if row is None:
            table.add_row(job.id[:8], job.task, one_line(job.what), "", Text("not seen", "dim"))
            continue
        table.add_row(job.id[:8], short_task(row.task_name), one_line(job.what), row.queue or "",
                      styled_status(row.status, short=True), progress_cell(row),
                      one_line(row.summary or ""))  # fmt: skip
    if len(shown) < len(plan):
        table.caption = f"… and {len(plan) - len(shown)} more that ended earlier"
    return table


class LiveView:
    """A rich Live table that redraws as the listener writes events to PostgreSQL."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.live = Live(console=console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def update(self, plan: list[PlannedJob], rows: dict[str, JobResponse]) -> None:
        """Redraw the table."""
        limit = max(5, self.console.size.height - 8)
        elapsed = time.monotonic() - self.started
        self.live.update(Group(headline(plan, rows, elapsed), jobs_table(plan, rows, limit)))

    def note(self, message: str) -> None:
        """A line above the table."""
        self.live.console.print(f"[yellow]→[/] {message}")


class LineView:
    """One plain line per change of a job (status, percentage or summary): for CI and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.seen: dict[str, tuple[str, int, str]] = {}

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, plan: list[PlannedJob], rows: dict[str, JobResponse]) -> None:
        """Print the jobs that changed since the last call."""
        for job in plan:
            row = rows.get(job.id)
            if row is None:
                continue
            state = (row.status.value, row.percentage, row.summary or "")
            if self.seen.get(job.id) != state:
                self.seen[job.id] = state
                self.console.print(
                    f"{time.monotonic() - self.started:6.1f}s  {job.id[:8]}  "
                    f"{short_task(row.task_name):<17} {row.status.value:<25} "
                    f"{row.percentage:>3}%  {row.summary or ''}",
                    markup=False, highlight=False,
                )  # fmt: skip

    def note(self, message: str) -> None:
        """A plain line."""
        self.console.print(f"-> {message}", markup=False, highlight=False)


# ---------------------------------------------------------------- the run


def where_the_data_lives(options: DemoOptions, services: Services, console: Console) -> None:
    """The database URL, a psql command, the logs, and what is still running."""
    url = services.database_url
    psql = services.postgres.psql_command(DEMO_DATABASE) if services.postgres else f"psql {url}"
    console.print("\n[bold]Where the data lives[/]")
    console.print(f"  database  {url}", markup=False)
    if services.postgres:
        console.print(f"  files     {services.postgres.data_dir}", markup=False)
    console.print(f'  psql      {psql} -c "select id, task_name, status, percentage, summary '
                  'from jobs order by start_date"', markup=False)  # fmt: skip
    console.print(f"  cli       job-tracker jobs --database {url}", markup=False)
    console.print(f"  logs      {options.data_dir / 'logs'}", markup=False)
    if services.postgres or services.redis:
        if options.keep:
            console.print("  The embedded PostgreSQL and Redis are still running; "
                          "stop them with: job-tracker demo --stop", markup=False)  # fmt: skip
        else:
            console.print("  The embedded servers are stopped now; `job-tracker demo --keep` "
                          "leaves them running.", markup=False)  # fmt: skip


def run_demo(options: DemoOptions, console: Console) -> str:
    """Run the whole demo; return the summary line (raise DemoError when it fails)."""

    def say(message: str) -> None:
        console.print(f"demo: {message}", markup=False, highlight=False)

    options.data_dir.mkdir(parents=True, exist_ok=True)
    with cleanup_stack() as stack:
        services = start_services(options, stack, say)
        init_db(services.database_url, say)
        processes = Processes(options, services, stack)
        start_processes(options, processes, say)
        rows = produce_and_track(options, services, processes, console, say)
        where_the_data_lives(options, services, console)
        stopping = not options.keep and (services.postgres or services.redis)
        say("stopping the workers, the listener and the embedded servers" if stopping
            else "stopping the workers and the listener")  # fmt: skip
    return summary_line(rows)


def produce_and_track(
    options: DemoOptions, services: Services, processes: Processes, console: Console,
    say: Callable[[str], None],
) -> dict[str, JobResponse]:  # fmt: skip
    """Submit the jobs, show them until all are terminal, check them, print the statistics."""
    ingest = load_example_app(services)
    with JobService(services.database_url, celery_app=ingest.app) as service:
        plan = submit_all(ingest, options.jobs)
        say(f"submitted {len(plan)} jobs; watching them in PostgreSQL")
        view: LiveView | LineView = LiveView(console) if options.live else LineView(console)
        with view:
            rows = track(plan, service, view, processes, options.timeout)
        check_outcomes(plan, rows)
        console.print("\n[bold]Statistics[/] (job-tracker stats)")
        render_stats(service.get_job_statistics(days=1), None, console)
    return rows


def stop_kept(data_dir: Path) -> list[str]:
    """Stop the embedded servers a `--keep` run left in `data_dir`; what was stopped."""
    try:
        from tracker import embedded
    except ImportError as exc:
        raise DemoError(str(exc)) from exc
    stopped = []
    if embedded.stop_redis(data_dir / "redis"):
        stopped.append("Redis")
    if embedded.stop_postgres(data_dir / "postgres"):
        stopped.append("PostgreSQL")
    return stopped
