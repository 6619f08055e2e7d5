"""Watching worker events: notice workers that run tasks but send no task events (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracker.events import Event

# Task events a worker sends only when started with -E (task-progress is sent regardless).
WORKER_TASK_EVENTS = frozenset(
    {"task-received", "task-started", "task-succeeded", "task-failed", "task-retried"}
)


DEFAULT_HEARTBEAT_FREQ = 2.0  # Celery's worker_heartbeat default interval, seconds


@dataclass(slots=True)
class WorkerState:
    """What we know of one worker from its heartbeats."""

    last_heartbeat: float
    last_task_event: float  # first seen, until a task event arrives
    processed: int | None = None
    busy_since_task_event: bool = False
    freq: float = DEFAULT_HEARTBEAT_FREQ
    offline: bool = False  # said goodbye (worker-offline)
    reported_gone: bool = False
    warned_at: float | None = None


@dataclass(slots=True)
class WorkerWatch:
    """Tracks worker heartbeats and task events per hostname."""

    warn_after: float
    workers: dict[str, WorkerState] = field(default_factory=dict)

    def observe(self, event: Event, now: float) -> None:
        """Take one event (worker or task) into account."""
        host = event.hostname
        if host is None:
            return
        if event.type.startswith("worker-"):
            self._heartbeat(host, event.fields, now)
        elif event.type in WORKER_TASK_EVENTS and host in self.workers:
            state = self.workers[host]
            state.last_task_event = now
            state.busy_since_task_event = False

    def _heartbeat(self, host: str, fields: Any, now: float) -> None:
        """Record a worker-online/heartbeat/offline event."""
        state = self.workers.setdefault(host, WorkerState(last_heartbeat=now, last_task_event=now))
        state.last_heartbeat = now
        state.offline = fields.get("type") == "worker-offline"
        if not state.offline:
            state.reported_gone = False  # back (or never gone)
        freq = fields.get("freq")
        if isinstance(freq, int | float) and not isinstance(freq, bool) and 0 < freq < 3600:
            state.freq = float(freq)
        processed = fields.get("processed")
        active = fields.get("active")
        if isinstance(processed, int) and state.processed is not None:
            state.busy_since_task_event |= processed > state.processed
        if isinstance(active, int) and active > 0:
            state.busy_since_task_event = True
        if isinstance(processed, int):
            state.processed = processed

    def silent_workers(self, now: float) -> list[str]:
        """Workers busy with tasks for `warn_after` seconds without a single task event."""
        silent = []
        for host, state in self.workers.items():
            quiet_since = state.last_task_event
            recently_warned = state.warned_at and now - state.warned_at < self.warn_after * 10
            if (
                state.busy_since_task_event
                and now - quiet_since >= self.warn_after
                and now - state.last_heartbeat < self.warn_after
                and not recently_warned
            ):
                state.warned_at = now
                silent.append(host)
        return silent

    def gone_workers(self, now: float) -> list[tuple[str, str]]:
        """Workers that went offline or whose heartbeats stopped for over 2x their period.

        Each is reported once per absence, with the reason.
        """
        gone = []
        for host, state in self.workers.items():
            if state.reported_gone:
                continue
            if state.offline:
                reason = "worker-offline"
            elif now - state.last_heartbeat > 2 * state.freq:
                reason = "heartbeat-lost"
            else:
                continue
            state.reported_gone = True
            gone.append((host, reason))
        return gone
