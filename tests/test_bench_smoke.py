"""Smoke version of the throughput benchmark (seconds, small N).

The generator's wire format is checked byte for byte against captures of a real prefork
worker, then 300 generated task lifecycles go through Redis into the real
`job-tracker listen` on a fresh database, and every event must be persisted with every
job row correct. The full benchmark is `python -m bench.run` (see bench/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from bench import db as bench_db
from bench import loadgen, wire
from tests.helpers import job_tracker, running, scalar, wait_consuming, wait_for


def test_generator_reproduces_real_worker_messages_byte_for_byte() -> None:
    assert wire.verify_redis_capture(wire.CAPTURES / "redis_prefork.jsonl") == []
    assert wire.verify_amqp_capture(wire.CAPTURES / "amqp_prefork.jsonl") == []
    assert wire.verify_shapes(wire.CAPTURES / "redis_prefork.jsonl") == []


def test_stream_has_prefork_lists_retries_and_failures() -> None:
    prep = loadgen.prepare(wire.StreamSpec(tasks=300, seed=11), "redis", 15)
    keys = {c.rsplit(b"/", 1)[1] for c in prep.channels}
    assert {b"task.multi", b"task.sent", b"task.progress", b"worker.heartbeat"} <= keys
    outcomes = {(e.status, e.retries > 0) for e in prep.expected.values()}
    assert outcomes == {("FINISHED", False), ("FINISHED", True), ("FAILED", False),
                        ("FAILED", True)}  # fmt: skip
    assert prep.prefix_for(1)[0] < prep.messages  # whole-group prefixes exist


def test_every_generated_event_is_persisted_by_listen(
    db_url: str, redis_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    db_number = loadgen.redis_db(redis_url)
    prep = loadgen.prepare(wire.StreamSpec(tasks=300, seed=11), "redis", db_number)
    ours = list(prep.expected)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        JOB_TRACKER_LOG_JSON="true",
        JOB_TRACKER_SPOOL_DIR=str(tmp_path / "spool"),
    )
    args = job_tracker("listen", "--broker", redis_url, "--database", db_url,
                       "--flush-interval", "0.05")  # fmt: skip
    count_sql = (f"SELECT count(*) FROM job_events WHERE job_id = ANY(:ids) "
                 f"AND {bench_db.GENERATED}")  # fmt: skip
    with running(args, env, tmp_path / "listen.log") as proc:
        # Our own listener must be subscribed: another one on this db would satisfy
        # wait_subscribed alone (tests run concurrently on a shared machine).
        wait_consuming(proc)
        client = loadgen.redis_client(redis_url)
        loadgen.wait_subscribed(client, db_number)
        loadgen.publish_flat(client, prep)
        wait_for(lambda: scalar(engine, count_sql, ids=ours) >= prep.total_task_events,
                 timeout=60, what=f"{prep.total_task_events} events in job_events")  # fmt: skip
        assert proc.popen.poll() is None, proc.output()
    check = bench_db.check_listen(engine, prep.expected)
    assert check["job_events"] == check["expected_job_events"] == prep.total_task_events
    wrong = {k: v for k, v in check.items() if k.startswith(("missing", "wrong")) and v}
    assert wrong == {}, check["examples"]
