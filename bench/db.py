"""PostgreSQL side of the benchmark: fresh databases, progress polling, lag, correctness."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.wire import Expected

POSTGRES_URL = os.environ.get("JT_BENCH_POSTGRES_URL", "postgresql:///postgres")
TEMPLATE = f"jt_bench_template_{os.getpid()}"  # one per run: runs may overlap
REPO = Path(__file__).resolve().parent.parent


def url_for(name: str, base: str = POSTGRES_URL) -> str:
    """The URL of database `name` on the benchmark's server (psycopg2 driver)."""
    url = make_url(base).set(database=name)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def create_engine(url: str, **options: Any) -> sa.Engine:
    """An engine on a benchmark database (the bench does not import the tracker)."""
    return sa.create_engine(url_for(make_url(url).database or "postgres", url), **options)


def tracker_env(tracker_src: Path) -> dict[str, str]:
    """Environment that makes `import tracker` load the checkout under test.

    Run such processes with cwd=tracker_src too: `python -c`/`-m` put the cwd first on
    sys.path, ahead of PYTHONPATH.
    """
    paths = [str(tracker_src)] if tracker_src == REPO else [str(tracker_src), str(REPO)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")


def tracker_cli(*args: str) -> list[str]:
    """argv running the job-tracker CLI of whatever `tracker` package PYTHONPATH selects."""
    return [
        sys.executable,
        "-c",
        "import sys; from tracker.cli import main; sys.exit(main())",
        *args,
    ]


class Databases:
    """Creates and drops the benchmark's databases (all named jt_bench_*)."""

    def __init__(self, base: str = POSTGRES_URL, tracker_src: Path = REPO) -> None:
        self.base = base
        self.tracker_src = tracker_src
        self.admin = create_engine(base).execution_options(isolation_level="AUTOCOMMIT")
        self.created: list[str] = []
        self._template_ready = False

    def execute(self, sql: str) -> None:
        """Run one statement on the maintenance database (autocommit)."""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(sql)

    def exists(self, name: str) -> bool:
        """True when the database exists."""
        with self.admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
        return found is not None

    def drop(self, name: str) -> None:
        """Drop a database, disconnecting anyone still on it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def template(self) -> str:
        """A database holding schema.sql (rebuilt once per run), the template of the others."""
        if not self._template_ready:
            self.drop(TEMPLATE)
            self.execute(f'CREATE DATABASE "{TEMPLATE}"')
            subprocess.run(
                tracker_cli("init-db", "--no-create", "--database", url_for(TEMPLATE, self.base)),
                env=tracker_env(self.tracker_src),
                cwd=self.tracker_src,
                check=True,
                capture_output=True,
            )
            self._template_ready = True
        return TEMPLATE

    def fresh(self, name: str, schema: bool = True) -> str:
        """A new database `name` (with the tracker schema unless schema=False); its URL."""
        self.drop(name)
        template = f' TEMPLATE "{self.template()}"' if schema else ""
        self.execute(f'CREATE DATABASE "{name}"{template}')
        self.created.append(name)
        return url_for(name, self.base)

    def cleanup(self, keep: bool = False) -> None:
        """Drop every database this run created (and the template) unless `keep`."""
        if not keep:
            for name in self.created:
                self.drop(name)
            self.drop(TEMPLATE)
        self.admin.dispose()


def engine_for(url: str) -> sa.Engine:
    """An autocommit engine for polling."""
    return create_engine(url, pool_size=2).execution_options(isolation_level="AUTOCOMMIT")


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    """The single value of a query."""
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


# The event types the generator sends: rows the tracker adds itself (task-orphaned when a
# worker's heartbeats stop, cancel-requested...) are not counted as kept events.
GENERATED_TYPES = (
    "task-sent",
    "task-received",
    "task-started",
    "task-progress",
    "task-retried",
    "task-succeeded",
    "task-failed",
)
GENERATED = "event_type IN (" + ", ".join(f"'{t}'" for t in GENERATED_TYPES) + ")"


class RowCounter:
    """Counts committed rows of a table cheaply: max(id) as a hint, count(*) to confirm."""

    def __init__(self, engine: sa.Engine, table: str, where: str = "true") -> None:
        self.engine = engine
        self.table = table
        self.where = where
        self.confirmed = 0

    def count(self) -> int:
        """Exact number of matching rows."""
        sql = f"SELECT count(*) FROM {self.table} WHERE {self.where}"
        return int(scalar(self.engine, sql) or 0)

    def progress(self, target: int) -> int:
        """Rows committed so far, exact once the hint reaches `target`."""
        hint = int(scalar(self.engine, f"SELECT coalesce(max(id), 0) FROM {self.table}") or 0)
        if hint >= target:
            self.confirmed = self.count()
            return self.confirmed
        return min(hint, target - 1)


@dataclass
class LagPoller:
    """Polls a table for newly committed rows and records commit lag per row.

    Each poll fetches the rows with an id above the last one seen; a row first seen by
    the poll that *started* at t became visible in (previous poll start, t], so its lag
    t - occurred is exact to within one poll interval (biased high by at most that).
    """

    engine: sa.Engine
    sql: str  # selects (id, occurred epoch seconds) WHERE id > :last ORDER BY id
    interval: float = 0.05
    lags: list[float] = field(default_factory=list)
    last_id: int = 0
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LagPoller:
        """Begin polling in a background thread."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with self.engine.connect() as conn:
            stmt = sa.text(self.sql)
            while not self._stop.is_set():
                began = time.time()
                rows = conn.execute(stmt, {"last": self.last_id}).all()
                self.polls += 1
                self.lags.extend(began - float(ts) for _, ts in rows if ts is not None)
                if rows:
                    self.last_id = int(rows[-1][0])
                self._stop.wait(max(0.0, self.interval - (time.time() - began)))

    @property
    def seen(self) -> int:
        """Rows seen so far."""
        return len(self.lags)

    def stop(self) -> list[float]:
        """Stop polling; return the lags (seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return self.lags


LISTEN_LAG_SQL = (
    "SELECT id, CASE WHEN " + GENERATED + " THEN extract(epoch FROM occurred_at)::float8 END "
    "FROM job_events WHERE id > :last ORDER BY id LIMIT 50000"
)
NAIVE_LAG_SQL = "SELECT id, occurred_ts FROM naive_events WHERE id > :last ORDER BY id LIMIT 50000"


def check_listen(engine: sa.Engine, expected: Mapping[str, Expected]) -> dict[str, Any]:
    """Compare `jobs` and `job_events` with what every task's events imply."""
    with engine.connect() as conn:
        jobs = {
            r[0]: r[1:]
            for r in conn.exec_driver_sql("SELECT id, status, percentage, retries FROM jobs")
        }
        grouped = f"SELECT job_id, count(*) FROM job_events WHERE {GENERATED} GROUP BY job_id"
        counts: dict[str, int] = {r[0]: int(r[1]) for r in conn.exec_driver_sql(grouped)}
    problems: dict[str, int] = {
        "missing_jobs": 0,
        "unexpected_jobs": 0,
        "wrong_status": 0,
        "wrong_percentage": 0,
        "wrong_retries": 0,
        "wrong_history_rows": 0,
    }
    examples: list[str] = []
    for job_id, exp in expected.items():
        row = jobs.get(job_id)
        if row is None:
            problems["missing_jobs"] += 1
            continue
        status, percentage, retries = row
        for key, ok in (
            ("wrong_status", status == exp.status),
            ("wrong_percentage", percentage == exp.percentage),
            ("wrong_retries", retries == exp.retries),
            ("wrong_history_rows", counts.get(job_id, 0) == exp.events),
        ):
            if not ok:
                problems[key] += 1
                if len(examples) < 5:
                    examples.append(
                        f"{job_id}: {key} row={row} history={counts.get(job_id)} expected={exp}"
                    )
    problems["unexpected_jobs"] = len(set(jobs) - set(expected))
    history = sum(counts.get(job_id, 0) for job_id in expected)
    expected_history = sum(e.events for e in expected.values())
    return {
        "ok": not any(problems.values()) and history == expected_history,
        "jobs": len(jobs),
        "expected_jobs": len(expected),
        "job_events": history,
        "expected_job_events": expected_history,
        **problems,
        "examples": examples,
    }
