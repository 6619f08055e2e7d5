"""The fast Redis intake: Celery's event fanout read straight from PUB/SUB.

On Redis, Celery publishes every event message with `PUBLISH /{db}.{exchange}/<routing
key> <kombu envelope>`, and kombu's consumer PSUBSCRIBEs to `/{db}.{exchange}/*`
(kombu.transport.redis: keyprefix_fanout, fanout_patterns, '#' -> '*'). This intake
subscribes to the same pattern on a plain socket (framing by hiredis) and hands the
envelope over untouched: unwrapping it (JSON, base64) is the writer's job, exactly as kombu
would do it (tracker.events.unwrap_kombu_redis). The read loop does nothing else, so it
drains Redis several times faster than kombu's consumer and a burst ends up in memory
or in the spool instead of overflowing Redis's output buffer for the subscriber.

It is used for plain `redis://` brokers without transport options that
change the channel names; everything else goes through kombu (tracker.intake).
"""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from celery import Celery

from tracker.config import ListenSettings
from tracker.envelope import KOMBU_REDIS_BATCH, Envelope
from tracker.intake import Intake
from tracker.log import get_logger

log = get_logger("intake")

# Transport options that change kombu's channel naming: leave those setups to kombu.
CHANNEL_OPTIONS = frozenset({"fanout_prefix", "fanout_patterns", "global_keyprefix"})
RECV_BYTES = 1 << 20  # one recv() takes up to 1 MiB: hundreds of messages per call


def fast_path_possible(app: Celery, settings: ListenSettings) -> bool:
    """True when the broker is plain Redis with kombu's default channel naming."""
    if settings.intake == "kombu" or settings.queue:
        return False
    url = str(app.conf.broker_url or settings.broker_url)
    options = app.conf.broker_transport_options or {}
    # TLS (rediss://), unix sockets and sentinels stay with kombu.
    return urlsplit(url).scheme == "redis" and not CHANNEL_OPTIONS & set(options)


def subscribe_pattern(broker_url: str, exchange: str) -> str:
    """The PSUBSCRIBE pattern kombu uses for the event exchange on this Redis db."""
    db = urlsplit(broker_url).path.strip("/") or "0"
    return f"/{int(db)}.{exchange}/*"


class RedisIntake(Intake):
    """Reads the event fanout from a raw socket; same lifecycle and hand-off as Intake.

    Large recv() calls and hiredis's C parser keep the cost per message to a few
    microseconds, with no system call per message: the read loop drains Redis far
    faster than kombu's consumer (or redis-py's get_message) can.
    """

    sock: socket.socket | None = None
    reader: Any = None
    buffer = bytearray()  # replaced by a RECV_BYTES buffer at the first connection

    def _errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean the Redis connection is gone or broken."""
        return (OSError, ConnectionError, hiredis.ProtocolError, RedisReplyError)

    def _connect(self) -> None:
        """Connect, authenticate, PSUBSCRIBE, and wait for the confirmation."""
        url = str(self.app.conf.broker_url or self.settings.broker_url)
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379),
                                             timeout=5)  # fmt: skip
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BYTES)
        self.reader = hiredis.Reader()
        if len(self.buffer) < RECV_BYTES:
            self.buffer = bytearray(RECV_BYTES)
        if parts.password:
            credentials = [unquote(parts.username)] if parts.username else []
            self._command("AUTH", *credentials, unquote(parts.password))
            self._expect(lambda reply: reply == b"OK", "AUTH")
        pattern = subscribe_pattern(url, self.app.conf.event_exchange)
        self._command("PSUBSCRIBE", pattern)
        self._expect(lambda reply: isinstance(reply, list) and reply[:1] == [b"psubscribe"],
                     "PSUBSCRIBE")  # fmt: skip
        self.sock.settimeout(0.05)
        log.info("consuming", broker=self.broker, pattern=pattern, durable=False, fast=True)
        self._wake_workers()

    def _command(self, *args: str) -> None:
        """Send one command in RESP."""
        assert self.sock is not None
        frame = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            frame.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(frame))

    def _expect(self, accept: Any, what: str) -> None:
        """Read the next reply; raise unless `accept(reply)` (before any message can come)."""
        assert self.sock is not None
        while (reply := self.reader.gets()) is False:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"Redis closed the connection during {what}")
            self.reader.feed(chunk)
        if isinstance(reply, hiredis.ReplyError) or not accept(reply):
            raise RedisReplyError(f"{what} refused: {str(reply)[:200]}")

    def _wake_workers(self) -> None:
        """Ask workers for a heartbeat now, over a short-lived kombu connection."""
        try:
            with self.app.connection_for_write() as conn:
                self.app.control.broadcast("heartbeat", connection=conn)
        except Exception as exc:
            log.warning("wakeup_failed", error=repr(exc)[:200])

    def _drain_once(self) -> None:
        """Read what Redis sent (up to RECV_BYTES) and hand each message to the writer."""
        assert self.sock is not None
        try:
            received = self.sock.recv_into(self.buffer)
        except TimeoutError:  # socket.timeout: nothing arrived
            return
        if received == 0:
            raise ConnectionError("Redis closed the connection")
        self.reader.feed(self.buffer, 0, received)
        messages = []
        while (reply := self.reader.gets()) is not False:
            # A pattern message is [b"pmessage", pattern, channel, kombu envelope].
            if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                messages.append(reply[3])
            elif isinstance(reply, hiredis.ReplyError):
                raise RedisReplyError(str(reply)[:200])
        if messages:
            # One hand-off per read, not per message: the loop stays cheap under a burst.
            self.deliver(Envelope(body=messages, received_at=time.time(),
                                  content_type=KOMBU_REDIS_BATCH))  # fmt: skip

    def _send_acks(self) -> None:
        """Nothing to acknowledge on PUB/SUB."""

    def _cancel(self) -> None:
        """Stop receiving (the subscription ends with the connection)."""
        self._close()

    def _close(self) -> None:
        """Drop the subscription's connection."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError as exc:
                log.debug("close_failed", error=repr(exc)[:200])
        self.sock = None


class RedisReplyError(Exception):
    """Redis answered a command with an error, or sent something unexpected."""
