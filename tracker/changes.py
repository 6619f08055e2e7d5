"""The job change an event implies, and how changes combine (pure, no I/O).

A JobChange is an element of a join-semilattice: `absorb` is commutative,
associative and idempotent, so folding any permutation of a job's events,
with duplicates, yields the same change. The SQL upsert in `store.py`
implements the same join against the stored row, so the final row is a
function of the *set* of events, whichever tracker writes them and in what order.

Field rules:
- descriptive fields (task name, args, document fields, ...): first non-null value
  (Celery sends the same values in every event of one task);
- `status`, `percentage`, `summary`, `worker`: last writer wins by a sortable key
  (terminal rank, event timestamp, event precedence, event hash);
- `metadata`: last writer wins per key;
- `start_ts`/`started_ts`: earliest; `retries`: largest, and at least the number of
  distinct task-retried events.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from tracker.status import JobPriority

T = TypeVar("T")
# (key, value): the value with the greatest key wins.
Register = tuple[str, T]

FIRST_NON_NULL = (
    "task_name", "args", "kwargs", "queue", "parent_id", "root_id", "result",
    "error_details", "document_id", "document_name", "document_type", "user_id",
    "estimated_duration",
)  # fmt: skip
REGISTERS = ("status", "percentage", "summary", "worker")


@dataclass(slots=True)
class JobChange:
    """What a set of events says about one job."""

    id: str
    start_ts: float
    task_name: str | None = None
    args: str | None = None
    kwargs: str | None = None
    queue: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    result: str | None = None
    error_details: str | None = None
    document_id: str | None = None
    document_name: str | None = None
    document_type: str | None = None
    user_id: str | None = None
    estimated_duration: int | None = None
    priority: JobPriority | None = None
    started_ts: float | None = None
    retries: int = 0
    retried: frozenset[str] = frozenset()
    # Registers; status carries (status, end_ts) so end_date follows the winning status.
    status: Register[tuple[str, float | None]] | None = None
    percentage: Register[int] | None = None
    summary: Register[str] | None = None
    worker: Register[str] | None = None
    metadata: dict[str, Register[Any]] = field(default_factory=dict)

    def absorb(self, other: JobChange) -> None:
        """Join `other` into this change (same job id)."""
        for name in FIRST_NON_NULL:
            if getattr(self, name) is None:
                setattr(self, name, getattr(other, name))
        for name in REGISTERS:
            setattr(self, name, newer(getattr(self, name), getattr(other, name)))
        self.priority = _join_priority(self.priority, other.priority)
        self.start_ts = min(self.start_ts, other.start_ts)
        self.started_ts = _min_or_none(self.started_ts, other.started_ts)
        self.retried = self.retried | other.retried
        self.retries = max(self.retries, other.retries, len(self.retried))
        for key, stamped in other.metadata.items():
            self.metadata[key] = newer(self.metadata.get(key), stamped) or stamped

    def copy(self) -> JobChange:
        """A shallow copy whose metadata can be changed independently."""
        clone = JobChange(**{f.name: getattr(self, f.name) for f in fields(self)})
        clone.metadata = dict(self.metadata)
        return clone


def newer(a: Register[T] | None, b: Register[T] | None) -> Register[T] | None:
    """The register with the greater key (keys are unique per event)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b[0] > a[0] else a


def _join_priority(a: JobPriority | None, b: JobPriority | None) -> JobPriority | None:
    """An explicitly given priority beats none, and a non-default one beats NORMAL."""
    if a is None or a == JobPriority.NORMAL:
        return b or a
    return a


def _min_or_none(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional numbers."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def fold(changes: list[JobChange]) -> dict[str, JobChange]:
    """Join a list of changes per job id (the reference the SQL merge must agree with)."""
    merged: dict[str, JobChange] = {}
    for change in changes:
        current = merged.get(change.id)
        if current is None:
            merged[change.id] = change.copy()
        else:
            current.absorb(change)
    return merged


def order_key(rank: int, timestamp: float, precedence: int, event_key: str) -> str:
    """A string that sorts like (rank, timestamp, precedence, event hash)."""
    return f"{rank}{timestamp:017.6f}{precedence:02d}{event_key}"
