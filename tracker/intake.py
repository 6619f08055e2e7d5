"""The intake: kombu/Celery wiring that reads event messages from the broker.

It runs in the main thread and does as little as possible per message: wrap the
raw body in an Envelope and hand it to the writer. Acknowledgements (AMQP with a
durable queue) are sent from this thread, since kombu channels are not thread
safe, once the committer reports that the events they carry are committed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events.event import get_exchange
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer

from tracker.config import ListenSettings, mask_broker_url
from tracker.counters import Counters
from tracker.envelope import Envelope, Inbox
from tracker.log import get_logger
from tracker.spool import Spool

log = get_logger("intake")

FIRST_RETRY = 0.5
MAX_RETRY = 10.0


def build_app(settings: ListenSettings) -> Celery:
    """The Celery app whose broker settings we use: the user's (--app) or a bare one."""
    if settings.app:
        from celery.app.utils import find_app

        app: Celery = find_app(settings.app)
    else:
        app = Celery("job-tracker", broker=settings.broker_url, set_as_current=False)
    if settings.event_exchange:
        app.conf.event_exchange = settings.event_exchange
    return app


def event_queue(app: Celery, connection: Connection, settings: ListenSettings) -> Queue:
    """The queue bound to Celery's event exchange for all routing keys."""
    exchange = get_exchange(connection, name=app.conf.event_exchange)
    if settings.queue:
        # A fixed durable queue survives restarts; several trackers on it share the load.
        return Queue(settings.queue, exchange=exchange, routing_key="#", durable=True,
                     auto_delete=False, exclusive=False)  # fmt: skip
    name = f"{app.conf.event_queue_prefix}.job-tracker.{time.time_ns():x}"
    return Queue(
        name,
        exchange=exchange,
        routing_key="#",
        durable=False,
        auto_delete=True,
        message_ttl=app.conf.event_queue_ttl,
        expires=app.conf.event_queue_expires,
    )


class Intake:
    """Consumes Celery events and feeds the writer; reconnects with capped backoff."""

    def __init__(
        self,
        app: Celery,
        settings: ListenSettings,
        inbox: Inbox,
        counters: Counters,
        spool: Spool | None = None,
        on_gap: Callable[[float, float], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.inbox = inbox
        self.counters = counters
        self.spool = spool
        self.on_gap = on_gap
        self.acks: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self.manual_ack = settings.queue is not None
        self.connection: Connection | None = None
        self.channel: Any = None
        self.consumer: Consumer | None = None

    @property
    def broker(self) -> str:
        """The broker URL with its password masked."""
        return mask_broker_url(str(self.app.conf.broker_url or self.settings.broker_url))

    # ------------------------------------------------------------ called by the committer

    def committed(self, tokens: list[Any]) -> None:
        """Thread-safe: these messages' events are committed and may be acknowledged."""
        if tokens:
            self.acks.put(tokens)

    # ------------------------------------------------------------ lifecycle

    def deliver(self, envelope: Envelope) -> None:
        """Hand a message without broker token to the writer, never blocking (thread-safe).

        When the in-memory inbox is full, or the spool already holds older messages,
        it goes to the on-disk spool: reading from Redis must never wait for PostgreSQL.
        """
        if self.spool is None:
            self.inbox.put(envelope)
            return
        if not self.spool.active:
            if self.inbox.offer(envelope):
                return
            log.warning("spooling", reason="in-memory buffer full",
                        spool_dir=str(self.spool.directory))  # fmt: skip
        self.spool.append_many(envelope.split())
        self.counters.spool_events = self.spool.pending

    def run(self, stop: threading.Event, writer: Any) -> None:
        """Consume until `stop` is set, then let the writer flush and acknowledge the rest."""
        self._connect_retrying(stop, gap_started=None)
        while not stop.is_set():
            try:
                self._drain_once()
            except self._errors() as exc:
                gap_started = time.time()
                log.error("broker_connection_lost", broker=self.broker, error=repr(exc)[:300])
                self._close()
                self._connect_retrying(stop, gap_started)
        self._shutdown(writer)

    def _errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean the broker connection or channel is gone."""
        conn = self.connection
        extra = (conn.connection_errors + conn.channel_errors) if conn is not None else ()
        return (OSError, ConnectionError, *extra)

    def _drain_once(self) -> None:
        """Wait briefly for messages, then send acknowledgements that are due."""
        assert self.connection is not None
        with contextlib.suppress(TimeoutError):  # socket.timeout: nothing arrived
            self.connection.drain_events(timeout=0.05)
        self._send_acks()

    def _connect_retrying(self, stop: threading.Event, gap_started: float | None) -> None:
        """Connect and start consuming; retry with capped exponential backoff."""
        delay = FIRST_RETRY
        while not stop.is_set():
            try:
                self._connect()
            except Exception as exc:
                log.error("broker_unreachable", broker=self.broker, error=repr(exc)[:300],
                          retry_in=delay)  # fmt: skip
                self._close()
                stop.wait(delay)
                delay = min(MAX_RETRY, delay * 2)
                continue
            if gap_started is not None:
                self._report_gap(gap_started, time.time())
            return

    def _report_gap(self, started: float, ended: float) -> None:
        """Log and count a period during which events may have been missed."""
        self.counters.gaps += 1
        log.warning("event_gap", start=started, end=ended, duration_s=round(ended - started, 3),
                    gaps=self.counters.gaps)  # fmt: skip
        if self.on_gap is not None:
            self.on_gap(started, ended)

    def _connect(self) -> None:
        """Open the connection, declare the queue and start the consumer."""
        conn = self.app.connection_for_read()
        conn.connect()  # one attempt: the backoff is ours (first retry within a second)
        self.connection = conn
        self.channel = conn.channel()
        q = event_queue(self.app, conn, self.settings)
        self.consumer = Consumer(self.channel, queues=[q], on_message=self._on_message,
                                 no_ack=not self.manual_ack, accept=["json"])  # fmt: skip
        if self.manual_ack:
            self.consumer.qos(prefetch_count=self.settings.prefetch)
        self.consumer.consume()
        # kombu's Redis transport sends PSUBSCRIBE on the first poll, not on consume:
        # poll once so that "consuming" means events published from now on arrive.
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.01)
        log.info("consuming", broker=self.broker, queue=q.name, durable=bool(self.settings.queue))
        self._wake_workers()

    def _wake_workers(self) -> None:
        """Ask workers for a heartbeat now, so we learn who is online (as EventReceiver does)."""
        try:
            self.app.control.broadcast("heartbeat", connection=self.connection)
        except Exception as exc:
            log.warning("wakeup_failed", error=repr(exc)[:200])

    def _on_message(self, message: Any) -> None:
        """Hand one raw message to the writer (no decoding here: the read loop stays free)."""
        if self.manual_ack:
            # Acknowledged after commit; the broker holds the rest (prefetch bound).
            token = (self.channel, message.delivery_tag)
            self.inbox.put(Envelope(body=message.body, received_at=time.time(),
                                    content_type=message.content_type, token=token))  # fmt: skip
            return
        self.deliver(Envelope(body=message.body, received_at=time.time(),
                              content_type=message.content_type))  # fmt: skip

    def _send_acks(self) -> None:
        """Acknowledge committed messages of the current channel (highest tag, multiple)."""
        highest = None
        while True:
            try:
                tokens = self.acks.get_nowait()
            except queue.Empty:
                break
            for channel, tag in tokens:
                # Tags of a closed channel are void: the broker has redelivered those messages.
                if channel is self.channel and (highest is None or tag > highest):
                    highest = tag
        if highest is not None:
            self.channel.basic_ack(highest, multiple=True)

    def _shutdown(self, writer: Any) -> None:
        """Stop consuming, let the writer flush, acknowledge, close."""
        try:
            self._cancel()
        except Exception as exc:
            log.warning("cancel_failed", error=repr(exc)[:200])
        writer.stop()
        while not writer.finished.wait(0.05):
            self._safe_acks()
        self._safe_acks()
        self._close()

    def _cancel(self) -> None:
        """Stop the consumer: the broker delivers nothing more (unacked ones are requeued)."""
        if self.consumer is not None:
            self.consumer.cancel()

    def _safe_acks(self) -> None:
        """Send due acknowledgements, ignoring a dead connection (the broker redelivers)."""
        try:
            self._send_acks()
        except Exception as exc:
            log.warning("ack_failed", error=repr(exc)[:200])

    def _close(self) -> None:
        """Release the connection, ignoring errors of an already dead one."""
        if self.connection is not None:
            try:
                self.connection.release()
            except Exception as exc:
                log.debug("close_failed", error=repr(exc)[:200])
        self.connection = self.channel = self.consumer = None
