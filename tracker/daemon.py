"""`job-tracker listen`: wires the intake, the writer and the reconciler; handles signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

from celery import Celery
from sqlalchemy.engine import Engine

from tracker import __version__, store
from tracker.config import ListenSettings, mask_broker_url
from tracker.counters import Counters
from tracker.envelope import Inbox
from tracker.intake import Intake, build_app
from tracker.log import get_logger
from tracker.reconcile import Reconciler
from tracker.redis_intake import RedisIntake, fast_path_possible
from tracker.spool import Spool
from tracker.writer import Writer

log = get_logger("daemon")


def wait_for_schema(settings: ListenSettings, stop: threading.Event) -> Engine:
    """An engine on a database holding our schema; waits while PostgreSQL is unreachable."""
    engine = store.create_engine(settings.database_url, pool_size=4)
    delay = 0.5
    while not stop.is_set():
        try:
            store.check_schema(engine)
            return engine
        except store.TransientStoreError as exc:
            log.error("database_unreachable", database=store.safe_url(settings.database_url),
                      error=str(exc), retry_in=delay)  # fmt: skip
            stop.wait(delay)
            delay = min(10.0, delay * 2)
    return engine


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: stop reading, flush and exit 0. A second one: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def result_backend_app(app: Celery, settings: ListenSettings) -> Celery | None:
    """A Celery app that can read task states, or None when no result backend is known."""
    if settings.result_backend:
        return Celery("job-tracker-reconcile", broker=app.conf.broker_url,
                      backend=settings.result_backend, set_as_current=False)  # fmt: skip
    backend = app.conf.result_backend
    return app if backend and backend != "disabled" else None


def start_reconciler(engine: Engine, app: Celery, settings: ListenSettings,
                     intake: Intake) -> Reconciler | None:  # fmt: skip
    """Start the reconciler (and a first pass: a restart is a gap) when a backend is known."""
    backend_app = result_backend_app(app, settings)
    if backend_app is None:
        log.info("reconcile_disabled", reason="no result backend (--result-backend or --app)")
        return None
    reconciler = Reconciler(engine, backend_app, intake.deliver, settings.reconcile_lookback_hours)
    reconciler.start()
    log.info("reconcile_enabled", backend=mask_broker_url(str(backend_app.conf.result_backend)))
    reconciler.request("start")
    return reconciler


def listen(settings: ListenSettings) -> int:
    """Run the tracker until a signal; return the process exit status."""
    stop = threading.Event()
    install_signal_handlers(stop)
    log.info("listen_starting", version=__version__, config=settings.redacted())
    spool = Spool(settings.spool_dir)
    if spool.pending:
        log.warning("spool_replay", events=spool.pending, spool_dir=str(spool.directory))
    engine = wait_for_schema(settings, stop)
    app = build_app(settings)
    inbox = Inbox(limit=settings.buffer_messages)
    counters = Counters()
    intake_class = RedisIntake if fast_path_possible(app, settings) else Intake
    intake = intake_class(app, settings, inbox, counters, spool=spool)
    writer = Writer(engine, settings, inbox, intake.committed, counters, spool=spool)
    writer.start()
    reconciler = start_reconciler(engine, app, settings, intake)
    if reconciler is not None:
        intake.on_gap = lambda _start, _end: reconciler.request("gap")
    started = time.monotonic()
    intake.run(stop, writer)
    writer.join(timeout=5)
    if reconciler is not None:
        reconciler.stop()
    spool.close()
    _forget(engine, writer.instance)
    log.info("listen_stopped", uptime_s=round(time.monotonic() - started, 1),
             events_applied=counters.events_applied, skipped=counters.skipped,
             dead=counters.dead, errors=counters.errors, gaps=counters.gaps,
             spooled=spool.pending)  # fmt: skip
    engine.dispose()
    return 0


def _forget(engine: Engine, instance: str) -> None:
    """Remove our liveness row (best effort: the database may be away)."""
    try:
        store.forget_instance(engine, instance)
    except store.StoreError as exc:
        log.warning("forget_instance_failed", error=str(exc))
