"""The reference consumers the tracker is compared with, each run as its own process.

- `receiver`: Celery's own `EventReceiver` with a handler that only counts events: the
  ceiling for anything built on it.
- `naive`: the seed's design: the same `EventReceiver`, and for every task event one
  SQLAlchemy ORM session that loads the job row, updates it, adds a history row and commits.

Both print one JSON status line to stdout every `--report-interval` seconds
(`{"t", "events", "task_events", "committed", "done_at"}`) and a final line with lag
percentiles on SIGTERM. `done_at` is the wall time at which `--expect` task events were
counted (receiver) or committed (naive).

    python -m bench.consumers receiver --broker redis://localhost:6379/14 --expect 1000
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from celery import Celery
from sqlalchemy import Float, Integer, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# ---------------------------------------------------------------- the naive tracker's model


class Base(DeclarativeBase):
    """Declarative base of the naive tracker's tables."""


class NaiveJob(Base):
    """One row per task, updated in place by every event (the seed's `jobs`)."""

    __tablename__ = "naive_jobs"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    percentage: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    args: Mapped[str | None] = mapped_column(Text)
    kwargs: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_ts: Mapped[float] = mapped_column(Float)
    updated_ts: Mapped[float] = mapped_column(Float)


class NaiveEvent(Base):
    """One row per event (the seed's history)."""

    __tablename__ = "naive_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(255), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    occurred_ts: Mapped[float] = mapped_column(Float)
    received_ts: Mapped[float] = mapped_column(Float)
    payload: Mapped[str] = mapped_column(Text)


STATUS = {
    "task-sent": "PENDING",
    "task-received": "PENDING",
    "task-started": "PROCESSING",
    "task-progress": "PROCESSING",
    "task-retried": "PENDING",
    "task-succeeded": "FINISHED",
    "task-failed": "FAILED",
    "task-revoked": "CANCELLED",
}
TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELLED"})


def naive_apply(session: Session, event: dict[str, Any]) -> None:
    """The seed's per-event logic: get or create the job, update it, add a history row."""
    job = session.get(NaiveJob, event["uuid"])
    now = time.time()
    if job is None:
        job = NaiveJob(
            id=event["uuid"],
            status="PENDING",
            percentage=0,
            retries=0,
            started_ts=event["timestamp"],
            updated_ts=now,
        )
        session.add(job)
    kind = event["type"]
    status = STATUS.get(kind)
    if status is not None and job.status not in TERMINAL:
        job.status = status
    job.task_name = job.task_name or event.get("name")
    job.args = job.args or event.get("args")
    job.kwargs = job.kwargs or event.get("kwargs")
    if isinstance(event.get("retries"), int):
        job.retries = max(job.retries or 0, event["retries"])
    if kind == "task-progress" and isinstance(event.get("percentage"), int | float):
        job.percentage = int(event["percentage"])
    if kind == "task-succeeded":
        job.percentage, job.result = 100, event.get("result")
    if kind == "task-failed":
        job.error = f"{event.get('exception')}\n{event.get('traceback')}"
    if kind in ("task-received", "task-started"):
        job.worker = event.get("hostname")
    job.updated_ts = now
    session.add(
        NaiveEvent(
            job_id=event["uuid"],
            event_type=kind,
            occurred_ts=event["timestamp"],
            received_ts=event["local_received"],
            payload=json.dumps(event),
        )
    )
    session.commit()


# ---------------------------------------------------------------- the consumer process


@dataclass
class Counts:
    """What the consumer has seen and done."""

    expect: int
    events: int = 0
    task_events: int = 0
    committed: int = 0
    reconnects: int = 0
    done_at: float | None = None
    lags: list[float] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float | None:
    """The q-quantile of a list (sorted in place)."""
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(q * len(values)))]


def make_handler(kind: str, counts: Counts, database: str | None, lag: bool) -> Any:
    """The EventReceiver handler: count only, or the naive per-event commit."""
    if kind == "receiver":

        def count(event: dict[str, Any]) -> None:
            counts.events += 1
            if event["type"].startswith("task-"):
                counts.task_events += 1
                if lag:
                    counts.lags.append(time.time() - event["timestamp"])
                if counts.task_events == counts.expect:
                    counts.done_at = time.time()

        return count
    engine = create_engine(database or "", pool_size=1)
    Base.metadata.create_all(engine)
    session = Session(engine, expire_on_commit=False)

    def persist(event: dict[str, Any]) -> None:
        counts.events += 1
        if not (event["type"].startswith("task-") and event.get("uuid")):
            return
        counts.task_events += 1
        try:
            naive_apply(session, event)
        except Exception as exc:
            session.rollback()
            print(json.dumps({"error": repr(exc)[:300]}), file=sys.stderr, flush=True)
            return
        counts.committed += 1
        if counts.committed == counts.expect:
            counts.done_at = time.time()

    return persist


def report(counts: Counts, final: bool = False) -> None:
    """Print one status line."""
    line: dict[str, Any] = {
        "t": time.time(),
        "events": counts.events,
        "task_events": counts.task_events,
        "committed": counts.committed,
        "done_at": counts.done_at,
        "reconnects": counts.reconnects,
    }
    if final:
        lags = counts.lags
        line.update(
            final=True,
            lag_n=len(lags),
            lag_p50=_percentile(lags, 0.5),
            lag_p99=_percentile(lags, 0.99),
        )
    print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Consume Celery events until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m bench.consumers", description=main.__doc__)
    p.add_argument("kind", choices=["receiver", "naive"])
    p.add_argument("--broker", required=True)
    p.add_argument("--database", help="naive: SQLAlchemy URL of its own database")
    p.add_argument("--queue", help="AMQP: consume this durable queue (pre-filled)")
    p.add_argument("--expect", type=int, default=0, help="task events; stamps done_at")
    p.add_argument(
        "--lag-file", help="receiver: write each task event's delivery lag here (float64 array)"
    )
    p.add_argument("--report-interval", type=float, default=0.1)
    args = p.parse_args(argv)
    counts = Counts(expect=args.expect)
    handler = make_handler(args.kind, counts, args.database, bool(args.lag_file))
    app = Celery("bench", broker=args.broker, set_as_current=False)
    if args.queue:
        app.conf.update(event_queue_ttl=None, event_queue_expires=None)
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)

    def reporter() -> None:
        while not stop.wait(args.report_interval):
            report(counts)

    threading.Thread(target=reporter, daemon=True).start()
    try:
        consume(app, args.queue, handler, counts)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        stop.set()
        if args.lag_file:
            with open(args.lag_file, "wb") as fh:
                array("d", counts.lags).tofile(fh)
        report(counts, final=True)


def consume(app: Celery, queue: str | None, handler: Any, counts: Counts) -> None:
    """Capture events forever; reconnect after a broker disconnect, as Flower does."""
    options: dict[str, Any] = {}
    if queue:
        prefix, _, node = queue.rpartition(".")
        options = {
            "queue_prefix": prefix,
            "node_id": node,
            "queue_durable": True,
            "queue_exclusive": False,
        }
    errors: tuple[type[BaseException], ...] = (OSError, ConnectionError, *connection_errors(app))
    while True:
        try:
            with app.connection_for_read() as conn:
                receiver = app.events.Receiver(conn, handlers={"*": handler}, **options)
                report(counts)
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except errors as exc:
            counts.reconnects += 1
            print(json.dumps({"reconnect": repr(exc)[:200]}), file=sys.stderr, flush=True)
            time.sleep(0.1)


def connection_errors(app: Celery) -> tuple[type[BaseException], ...]:
    """The broker transport's connection and channel errors."""
    with app.connection_for_read() as conn:
        return tuple(conn.connection_errors) + tuple(conn.channel_errors)


if __name__ == "__main__":
    main()
