"""What the intake hands to the writer: broker messages, undecoded, through a bounded inbox."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from tracker.events import KOMBU_REDIS_ENVELOPE, Body

# Marks an Envelope whose body is a list of kombu Redis envelopes read in one recv().
KOMBU_REDIS_BATCH = "application/x-kombu-redis-envelope-list"


@dataclass(slots=True)
class Envelope:
    """One broker message (or one read's worth of Redis messages) as the intake got it."""

    body: Body
    received_at: float
    content_type: str | None = "application/json"
    token: Any = None  # acknowledged through `on_committed` once its events are stored

    @property
    def weight(self) -> int:
        """How many broker messages this envelope holds."""
        return len(self.body) if self.content_type == KOMBU_REDIS_BATCH else 1

    def split(self) -> list[Envelope]:
        """The single messages of this envelope."""
        if self.content_type != KOMBU_REDIS_BATCH or not isinstance(self.body, list):
            return [self]
        return [Envelope(raw, self.received_at, KOMBU_REDIS_ENVELOPE) for raw in self.body]


class Inbox:
    """The in-memory queue between the intake and the writer, bounded in messages."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages = 0
        self._queue: queue.SimpleQueue[Envelope] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def offer(self, envelope: Envelope) -> bool:
        """Queue the envelope unless that would pass the bound; never blocks."""
        weight = envelope.weight
        with self._lock:
            if self.messages and self.messages + weight > self.limit:
                return False
            self.messages += weight
        self._queue.put(envelope)
        return True

    def put(self, envelope: Envelope) -> None:
        """Queue the envelope, waiting for room (AMQP: the broker holds the rest meanwhile)."""
        while not self.offer(envelope):
            time.sleep(0.005)

    def get(self, timeout: float | None = None) -> Envelope:
        """The oldest envelope; raises queue.Empty after `timeout` seconds."""
        return self._taken(self._queue.get(timeout=timeout))

    def get_nowait(self) -> Envelope:
        """The oldest envelope, or queue.Empty at once."""
        return self._taken(self._queue.get_nowait())

    def _taken(self, envelope: Envelope) -> Envelope:
        """Count an envelope out of the bound."""
        with self._lock:
            self.messages -= envelope.weight
        return envelope

    def empty(self) -> bool:
        """True when nothing is queued."""
        return self._queue.empty()

    def qsize(self) -> int:
        """Messages queued."""
        return self.messages
