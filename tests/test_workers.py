"""Pure parts of the repair logic: worker watch and result-backend events."""

from __future__ import annotations

from datetime import UTC, datetime

from tracker.events import Event, parse_event
from tracker.mapping import MappingContext, map_event
from tracker.reconcile import SOURCE, reconciled_event
from tracker.workers import WorkerWatch


def worker_event(type_: str, host: str = "w1", **fields: object) -> Event:
    """A worker-* or task-* event from `host`."""
    raw = {"type": type_, "hostname": host, "timestamp": 1.0, **fields}
    event = parse_event(raw, 1.0)
    assert isinstance(event, Event)
    return event


def test_heartbeats_stopping_for_twice_their_period_mean_gone() -> None:
    watch = WorkerWatch(warn_after=60)
    watch.observe(worker_event("worker-heartbeat", freq=2.0), now=100.0)
    assert watch.gone_workers(now=103.9) == []
    assert watch.gone_workers(now=104.1) == [("w1", "heartbeat-lost")]
    assert watch.gone_workers(now=110.0) == []  # reported once per absence
    watch.observe(worker_event("worker-heartbeat", freq=2.0), now=111.0)
    assert watch.gone_workers(now=120.0) == [("w1", "heartbeat-lost")]


def test_worker_offline_means_gone_at_once() -> None:
    watch = WorkerWatch(warn_after=60)
    watch.observe(worker_event("worker-online"), now=100.0)
    watch.observe(worker_event("worker-offline"), now=101.0)
    assert watch.gone_workers(now=101.0) == [("w1", "worker-offline")]


def test_busy_worker_without_task_events_is_reported_after_the_delay() -> None:
    watch = WorkerWatch(warn_after=10)
    watch.observe(worker_event("worker-heartbeat", active=1, processed=0), now=100.0)
    watch.observe(worker_event("worker-heartbeat", active=1, processed=3), now=105.0)
    assert watch.silent_workers(now=105.0) == []
    watch.observe(worker_event("worker-heartbeat", active=1, processed=5), now=110.0)
    assert watch.silent_workers(now=110.5) == ["w1"]
    assert watch.silent_workers(now=111.0) == []  # not repeated at every check


def test_worker_sending_task_events_is_never_reported() -> None:
    watch = WorkerWatch(warn_after=10)
    watch.observe(worker_event("worker-heartbeat", active=1, processed=0), now=100.0)
    watch.observe(worker_event("task-started", uuid="t1"), now=109.0)
    watch.observe(worker_event("worker-heartbeat", active=1, processed=1), now=112.0)
    assert watch.silent_workers(now=115.0) == []


def test_backend_states_become_marked_terminal_events() -> None:
    done = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    success = reconciled_event("j1", "SUCCESS", {"n": 1}, None, done, now=9.0)
    assert success is not None
    assert (success["type"], success["result"], success["source"]) == (
        "task-succeeded", "{'n': 1}", SOURCE)  # fmt: skip
    assert success["timestamp"] == done.timestamp()
    failure = reconciled_event("j1", "FAILURE", ValueError("x"), "Traceback", None, now=9.0)
    assert failure is not None
    assert (failure["type"], failure["exception"], failure["timestamp"]) == (
        "task-failed", "ValueError('x')", 9.0)  # fmt: skip
    revoked = reconciled_event("j1", "REVOKED", None, None, None, now=9.0)
    assert revoked is not None
    assert revoked["type"] == "task-revoked"
    for state in ("PENDING", "STARTED", "RETRY"):
        assert reconciled_event("j1", state, None, None, None, now=9.0) is None


def test_reconciled_event_maps_to_a_terminal_state_with_its_source_in_history() -> None:
    raw = reconciled_event("j1", "SUCCESS", "ok", None, None, now=5.0)
    event = parse_event(raw, 5.0)
    assert isinstance(event, Event)
    mapped = map_event(event, MappingContext())
    assert mapped.change.status is not None
    assert mapped.change.status[1][0] == "FINISHED"
    assert mapped.history.details["source"] == SOURCE


def test_orphan_event_flags_metadata_and_summary_but_not_status() -> None:
    flags = {"orphaned": True, "orphaned_worker": "w1", "orphaned_reason": "worker-offline"}
    raw = {"type": "task-orphaned", "uuid": "j1", "timestamp": 5.0, "hostname": "jt", **flags}
    event = parse_event(raw, 5.0)
    assert isinstance(event, Event)
    change = map_event(event, MappingContext()).change
    assert change.status is None
    assert change.summary is not None
    assert change.summary[1].startswith("Orphaned: w1 went away")
    assert {k: v[1] for k, v in change.metadata.items()} == flags
