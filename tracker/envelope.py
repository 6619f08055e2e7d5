"""What the intake hands to the writer: one broker message, undecoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracker.events import Body


@dataclass(slots=True)
class Envelope:
    """One broker message as the intake received it."""

    body: Body
    received_at: float
    content_type: str | None = "application/json"
    token: Any = None  # acknowledged through `on_committed` once its events are stored
