"""The three consumers under test behind one interface: start, progress, stop."""

from __future__ import annotations

import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import db, procs

PYTHON = sys.executable


@dataclass
class Env:
    """What every subject needs: where to log, and the databases helper."""

    logs: Path
    dbs: db.Databases
    run_id: str
    tracker_src: Path = db.REPO
    keep_databases: bool = False
    counter: int = 0

    def next_name(self, kind: str) -> str:
        """A unique database / log name for this run."""
        self.counter += 1
        return f"jt_bench_{self.run_id}_{kind}_{self.counter}"


@dataclass
class Subject:
    """A consumer under test. Subclasses say how to start it and how to count progress."""

    env: Env
    name: str = ""
    child: procs.Child | None = None
    db_name: str | None = None
    db_url: str | None = None
    engine: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The consumer's process id."""
        assert self.child is not None
        return self.child.pid

    def command(self, broker: str, expect: int, queue: str | None, lag: bool) -> list[str]:
        """The consumer's argv."""
        raise NotImplementedError

    def prepare_db(self) -> None:
        """Create the consumer's fresh database, if it has one."""

    def start(self, broker: str, expect: int, queue: str | None = None, lag: bool = False) -> None:
        """Start the consumer (on a fresh database)."""
        self.prepare_db()
        label = self.env.next_name(self.name)
        env = db.tracker_env(self.env.tracker_src)
        env["JOB_TRACKER_LOG_JSON"] = "true"
        self.child = procs.Child(
            self.command(broker, expect, queue, lag),
            self.env.logs / f"{label}.log",
            env=env,
            status_from_stdout=self.name != "listen",
            cwd=self.env.tracker_src,
        )

    def progress(self, target: int) -> int:
        """Task events counted (receiver) or committed (trackers) so far."""
        raise NotImplementedError

    def done_at(self) -> float | None:
        """The wall time the target was reached, when the consumer measured it itself."""
        return None

    def lag_poller(self) -> db.LagPoller | None:
        """A poller that measures commit lag, for subjects with a database."""
        return None

    def final(self) -> dict[str, Any]:
        """The consumer's own final report (receiver lag), after stop()."""
        return {}

    def alive(self) -> bool:
        """True while the consumer process runs."""
        return self.child is not None and self.child.alive()

    def stop(self) -> int:
        """Stop the consumer and dispose of the polling engine."""
        code = self.child.stop() if self.child is not None else 0
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        return code

    def drop_db(self) -> None:
        """Drop the consumer's database unless the run keeps them."""
        if self.db_name and not self.env.keep_databases:
            self.env.dbs.drop(self.db_name)

    def wait_for(
        self, target: int, timeout: float, idle: float = 5.0, interval: float = 0.05
    ) -> tuple[int, float | None]:
        """Poll until `target` events are in, nothing moved for `idle` s, or `timeout`.

        Returns (events, wall time the target was reached or None).
        """
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = time.time()
            got = self.progress(target)
            if got >= target:
                return got, self.done_at() or now
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
            if not self.alive():
                break
            time.sleep(interval)
        return max(last, self.progress(target)), None


class Receiver(Subject):
    """Celery's EventReceiver with a no-op (counting) handler: the ceiling."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, name="receiver")
        self.lag_path: Path | None = None

    def command(self, broker: str, expect: int, queue: str | None, lag: bool) -> list[str]:
        args = [
            PYTHON,
            "-m",
            "bench.consumers",
            "receiver",
            "--broker",
            broker,
            "--expect",
            str(expect),
        ]
        if queue:
            args += ["--queue", queue]
        if lag:
            self.lag_path = self.env.logs / f"receiver-lags-{self.env.counter}.bin"
            args += ["--lag-file", str(self.lag_path)]
        return args

    def lags(self) -> list[float]:
        """The delivery lags the receiver recorded (after stop())."""
        values = array("d")
        if self.lag_path is None:
            return []
        try:
            with self.lag_path.open("rb") as fh:
                values.frombytes(fh.read())
        except OSError:
            return []
        return values.tolist()

    def progress(self, target: int) -> int:
        assert self.child is not None
        return int(self.child.status.get("task_events", 0))

    def done_at(self) -> float | None:
        assert self.child is not None
        value = self.child.status.get("done_at")
        return float(value) if value else None

    def final(self) -> dict[str, Any]:
        assert self.child is not None
        return self.child.final


class Naive(Receiver):
    """The seed's design: EventReceiver + one ORM session and commit per event."""

    def __init__(self, env: Env) -> None:
        Subject.__init__(self, env, name="naive")
        self.lag_path = None

    def prepare_db(self) -> None:
        self.db_name = self.env.next_name("naive")
        self.db_url = self.env.dbs.fresh(self.db_name, schema=False)
        self.engine = db.engine_for(self.db_url)

    def command(self, broker: str, expect: int, queue: str | None, lag: bool) -> list[str]:
        assert self.db_url is not None
        args = [
            PYTHON,
            "-m",
            "bench.consumers",
            "naive",
            "--broker",
            broker,
            "--database",
            self.db_url,
            "--expect",
            str(expect),
        ]
        return args + (["--queue", queue] if queue else [])

    def progress(self, target: int) -> int:
        assert self.child is not None
        return int(self.child.status.get("committed", 0))

    def lag_poller(self) -> db.LagPoller | None:
        return db.LagPoller(self.engine, db.NAIVE_LAG_SQL)


class Listen(Subject):
    """`job-tracker listen` on a fresh database."""

    def __init__(self, env: Env, options: list[str] | None = None) -> None:
        super().__init__(env, name="listen")
        self.options = options or []
        self.counter: db.RowCounter | None = None

    def prepare_db(self) -> None:
        self.db_name = self.env.next_name("listen")
        self.db_url = self.env.dbs.fresh(self.db_name)
        self.engine = db.engine_for(self.db_url)
        self.counter = db.RowCounter(self.engine, "job_events", db.GENERATED)

    def command(self, broker: str, expect: int, queue: str | None, lag: bool) -> list[str]:
        assert self.db_url is not None
        args = db.tracker_cli(
            "listen",
            "--broker",
            broker,
            "--database",
            self.db_url,
            "--stats-interval",
            "5",
            "--spool-dir",
            f"/tmp/jt-bench-spool-{self.db_name}",  # own spool: runs may overlap
            *self.options,
        )
        return args + (["--queue", queue] if queue else [])

    def progress(self, target: int) -> int:
        assert self.counter is not None
        return self.counter.progress(target)

    def lag_poller(self) -> db.LagPoller | None:
        return db.LagPoller(self.engine, db.LISTEN_LAG_SQL)

    def log_events(self, name: str) -> list[str]:
        """Log lines of the listener mentioning an event name (gap, errors...)."""
        assert self.child is not None
        return [line for line in self.child.output().splitlines() if name in line]


def make(kind: str, env: Env) -> Subject:
    """A subject by name."""
    kinds: dict[str, type[Subject]] = {"receiver": Receiver, "naive": Naive, "listen": Listen}
    return kinds[kind](env)
