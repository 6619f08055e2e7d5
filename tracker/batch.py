"""A batch of mapped events waiting to be written (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracker.changes import JobChange
from tracker.events import Event
from tracker.mapping import HistoryRow, Mapped


@dataclass(slots=True)
class Batch:
    """Events coalesced per job, their history rows, and the broker tokens to ack."""

    jobs: dict[str, JobChange] = field(default_factory=dict)
    history: dict[tuple[str, str], HistoryRow] = field(default_factory=dict)
    items: list[tuple[Event, Mapped]] = field(default_factory=list)
    tokens: list[Any] = field(default_factory=list)
    opened_at: float | None = None

    def add(self, event: Event, mapped: Mapped, now: float) -> None:
        """Coalesce one mapped event into the batch."""
        if self.opened_at is None:
            self.opened_at = now
        self.items.append((event, mapped))
        history = mapped.history
        self.history.setdefault((history.job_id, history.event_key), history)
        current = self.jobs.get(mapped.change.id)
        if current is None:
            self.jobs[mapped.change.id] = mapped.change.copy()
        else:
            current.absorb(mapped.change)

    def note_token(self, token: Any, now: float) -> None:
        """Remember a broker message to acknowledge once this batch has committed."""
        if self.opened_at is None:
            self.opened_at = now
        self.tokens.append(token)

    @property
    def size(self) -> int:
        """Number of events in the batch."""
        return len(self.items)

    @property
    def empty(self) -> bool:
        """True when there is nothing to write and nothing to acknowledge."""
        return not self.items and not self.tokens

    def sorted_jobs(self) -> list[JobChange]:
        """Job changes in id order (row locks are always taken in this order)."""
        return [self.jobs[k] for k in sorted(self.jobs)]


def batch_of(items: list[tuple[Event, Mapped]]) -> Batch:
    """A new batch holding exactly these items (used to split a refused batch)."""
    batch = Batch()
    for event, mapped in items:
        batch.add(event, mapped, 0.0)
    return batch
