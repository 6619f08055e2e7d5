"""Helpers shared by the tests: deterministic waiting, subprocesses, event factories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> T:  # fmt: skip
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = predicate()
    return last


def fetch_all(engine: sa.Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query as dicts."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    """The single value of a query."""
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


class Proc:
    """A subprocess whose output goes to a log file, stopped and reaped by the fixture."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        """Everything the process printed so far (it writes to the file directly)."""
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Send a signal to the process group."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, then SIGKILL; return the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(10)
        finally:
            self._log.close()


@contextmanager
def running(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[Proc]:
    """Run a process for the duration of a with-block, always cleaning it up."""
    proc = Proc(args, env, log_path)
    try:
        yield proc
    finally:
        if proc.popen.poll() is None:
            proc.stop()
        else:
            proc._log.close()


def wait_consuming(proc: Proc, timeout: float = 30.0) -> None:
    """Wait until a `job-tracker listen` process has subscribed to the event exchange."""
    wait_for(lambda: '"consuming"' in proc.output(), timeout, what="listener consuming")


def job_tracker(*args: str) -> list[str]:
    """The argv of the installed job-tracker console script."""
    return [str(BIN / "job-tracker"), *args]


def celery_worker(app: str, name: str, queues: str = "celery,gpu",
                  concurrency: int = 2) -> list[str]:  # fmt: skip
    """The argv of a real `celery worker -E` process."""
    return [str(BIN / "celery"), "-A", app, "worker", "-E", "-Q", queues, "-c", str(concurrency),
            "-n", name, "--pool", "prefork", "--loglevel", "INFO", "--without-mingle",
            "--without-gossip"]  # fmt: skip
