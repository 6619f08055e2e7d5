"""Running totals of a listener, shared by its threads (reported in logs and liveness)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class Counters:
    """Running totals, reported in the periodic summary and the liveness row."""

    messages: int = 0
    events: int = 0
    events_applied: int = 0
    skipped: int = 0
    dead: int = 0
    batches: int = 0
    jobs_written: int = 0
    errors: int = 0
    gaps: int = 0
    spool_events: int = 0
    window_events: int = 0  # applied since the last summary line
    last_event_at: datetime | None = None
    lags: list[float] = field(default_factory=list)
