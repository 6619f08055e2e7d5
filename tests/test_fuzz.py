"""Fuzzing the decoder, the mapping and the SQL merge with hostile and malformed input."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import store
from tracker.batch import Batch
from tracker.events import decode_message
from tracker.mapping import RULES, MappingContext, map_event

TYPES = [*RULES, "task-custom", "worker-heartbeat", "", "task-", "x" * 300]
FIELDS = ["percentage", "message", "kwargs", "args", "name", "retries", "result", "exception",
          "traceback", "queue", "root_id", "parent_id", "document_id", "user_id", "priority",
          "metadata", "estimated_duration", "requeue", "expired", "terminated", "signum",
          "runtime", "hostname", "timestamp", "utcoffset", "clock"]  # fmt: skip

# Text with everything PostgreSQL dislikes: NUL, lone surrogates, quotes, SQL.
hostile_text = st.one_of(
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40),
    st.sampled_from(
        [
            "'); DROP TABLE jobs; --",
            "\x00",
            "\ud800",
            "{'document_id': 'd', ",
            "__import__('os').system('id')",
            "{'metadata': {'a': {1, 2}}, 'x': b'y'}",
            "%(jobs)s",
            "$$",
            "\\u0000",
        ]
    ),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), hostile_text,
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event-shaped dict with arbitrary, often wrong, field values."""
    event: dict[str, Any] = {
        "type": draw(st.one_of(st.sampled_from(TYPES), json_values)),
        "uuid": draw(st.one_of(st.sampled_from(["job-a", "job-b"]), json_values)),
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=8)):
        event[name] = draw(json_values)
    return event


def encode(value: Any) -> bytes:
    """JSON as Celery's serializer would produce it (NaN and huge ints allowed)."""
    return json.dumps(value).encode()


@given(st.lists(raw_events(), min_size=1, max_size=6))
@settings(max_examples=400, deadline=None)
def test_decoder_and_mapping_never_raise(events: list[dict[str, Any]]) -> None:
    decoded = decode_message(encode(events), received_at=1_700_000_000.0)
    assert len(decoded.events) + len(decoded.errors) == len(events)
    batch = Batch()
    for event in decoded.events:
        if event.is_task_event:
            batch.add(event, map_event(event, MappingContext()), 0.0)
    for change in batch.jobs.values():
        row = store.job_row(change)
        assert 0 <= (row.get("percentage") or 0) <= 100
        store._dumps(row)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decoder_survives_arbitrary_bytes(body: bytes) -> None:
    decoded = decode_message(body, received_at=1.0)
    assert decoded.events or decoded.errors or body.strip() in (b"[]",)


@given(st.lists(raw_events(), min_size=1, max_size=8))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_postgresql_accepts_whatever_the_mapping_produces(
    engine: sa.Engine, events: list[dict[str, Any]]
) -> None:
    decoded = decode_message(encode(events), received_at=1_700_000_000.0)
    batch = Batch()
    for event in decoded.events:
        if event.is_task_event:
            batch.add(event, map_event(event, MappingContext()), 0.0)
    if batch.items:
        store.apply_batch(engine, batch.sorted_jobs(), batch.history.values())
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regclass('jobs')").scalar() is not None
