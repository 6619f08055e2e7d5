"""`job-tracker listen`: wires the intake and the writer together and handles signals."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from types import FrameType
from typing import Any

from tracker import __version__, store
from tracker.config import ListenSettings
from tracker.intake import Intake, build_app
from tracker.log import get_logger
from tracker.writer import Counters, Writer

log = get_logger("daemon")


def wait_for_schema(settings: ListenSettings, stop: threading.Event) -> Any:
    """An engine on a database holding our schema; waits while PostgreSQL is unreachable."""
    engine = store.create_engine(settings.database_url)
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


def listen(settings: ListenSettings) -> int:
    """Run the tracker until a signal; return the process exit status."""
    stop = threading.Event()
    install_signal_handlers(stop)
    log.info("listen_starting", version=__version__, config=settings.redacted())
    engine = wait_for_schema(settings, stop)
    app = build_app(settings)
    inbox: queue.Queue[Any] = queue.Queue(maxsize=settings.buffer_events)
    counters = Counters()
    intake = Intake(app, settings, inbox, counters)
    writer = Writer(engine, settings, inbox, intake.committed, counters)
    writer.start()
    started = time.monotonic()
    intake.run(stop, writer.finished)
    writer.join(timeout=5)
    log.info("listen_stopped", uptime_s=round(time.monotonic() - started, 1),
             events_applied=counters.events_applied, skipped=counters.skipped,
             dead=counters.dead, errors=counters.errors)  # fmt: skip
    engine.dispose()
    return 0
