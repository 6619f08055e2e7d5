"""`job-tracker listen` as a process: bad input on the real broker, batching, clean stop."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from celery.events.event import get_exchange
from kombu.connection import Connection
from kombu.messaging import Producer

from tests import lifecycles as lc
from tests.helpers import Proc, fetch_all, job_tracker, running, scalar, wait_consuming, wait_for


@pytest.fixture
def listener(service_env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    """A running listener with a short summary interval."""
    args = job_tracker("listen", "--stats-interval", "0.5", "--flush-interval", "0.05")
    with running(args, service_env, tmp_path / "listen.log") as proc:
        wait_consuming(proc)
        yield proc


def publish(redis_url: str, body: Any, routing_key: str = "task.multi",
            content_type: str = "application/json") -> None:  # fmt: skip
    """Publish one message on Celery's event exchange exactly as kombu would."""
    with Connection(redis_url) as conn:
        producer = Producer(conn.channel(), exchange=get_exchange(conn))
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        producer.publish(payload, routing_key=routing_key, content_type=content_type,
                         content_encoding="utf-8", serializer=None)  # fmt: skip


def log_events(proc: Proc) -> list[dict[str, Any]]:
    """The listener's JSON log lines."""
    lines = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def test_bad_messages_are_logged_counted_and_never_fatal(
    listener: Proc, redis_url: str, engine: sa.Engine
) -> None:
    huge = "x" * 2_000_000
    life = lc.success()
    life.events[0]["name"] = "x'); DROP TABLE jobs; --"
    life.events[0]["kwargs"] = "{'user_id': \"'; DELETE FROM jobs; --\", 'n': 1}"
    life.events[-1]["result"] = huge
    publish(redis_url, b"\x80not json at all")
    publish(redis_url, b"definitely not pickle", content_type="application/x-python-serialize")
    publish(redis_url, [{"type": "task-started"}, "junk", {"uuid": "no-type"}, 42])
    publish(redis_url, {"type": "task-started", "uuid": ["not", "a", "string"]})
    publish(redis_url, {"type": "task-progress", "uuid": life.id, "timestamp": "soon",
                        "percentage": {"a": 1}, "message": 7})  # fmt: skip
    publish(redis_url, {"type": "task-exploded", "uuid": life.id, "timestamp": life.t + 9,
                        "blob": {"nested": [1, 2, {"deep": "x"}]}})  # fmt: skip
    publish(redis_url, {"type": "something-else", "hostname": "w"})
    publish(redis_url, life.events)
    row = wait_for(lambda: fetch_all(engine, "SELECT * FROM jobs WHERE id = :id AND "
                                     "status = 'FINISHED'", id=life.id), 30)[0]  # fmt: skip
    assert row["task_name"] == "x'); DROP TABLE jobs; --"
    assert row["user_id"] == "'; DELETE FROM jobs; --"
    assert row["metadata"]["blob"] == {"nested": [1, 2, {"deep": "x"}]}
    assert len(row["result"]) < 70_000
    assert row["result"].endswith("[truncated 1934464 chars]")
    assert scalar(engine, "SELECT count(*) FROM jobs") == 1
    types = scalar(engine, "SELECT array_agg(DISTINCT event_type) FROM job_events")
    assert "task-exploded" in types
    reasons = wait_for(lambda: [e["reason"] for e in log_events(listener)
                                if e["event"] == "event_skipped"], 10)  # fmt: skip
    assert any(r.startswith("body is not JSON") for r in reasons)
    assert any(r.startswith("unsupported content type") for r in reasons)
    assert "task-started event has no uuid" in reasons
    assert "event has no type" in reasons
    assert "event is not an object but int" in reasons
    summary = wait_for(lambda: [e for e in log_events(listener) if e["event"] == "summary"
                                and e["skipped"] >= 7], 10)  # fmt: skip
    assert summary[-1]["dead"] == 0
    assert summary[-1]["messages"] == 8  # every message published above was read
    assert summary[-1]["events_received"] == len(life.events) + 3  # + progress, custom, worker
    assert listener.popen.poll() is None


def test_events_are_visible_within_250_ms_under_light_load(
    listener: Proc, redis_url: str, engine: sa.Engine
) -> None:
    delays = []
    for _ in range(5):
        life = lc.Lifecycle(start=time.time()).sent()
        sent_at = time.monotonic()
        publish(redis_url, life.events[0], routing_key="task.sent")
        job_id = life.id
        wait_for(lambda: scalar(engine, "SELECT 1 FROM jobs WHERE id = :id", id=job_id),
                 5, interval=0.005)  # fmt: skip
        delays.append(time.monotonic() - sent_at)
    assert max(delays) < 0.25, delays


def test_sigterm_flushes_and_exits_zero(listener: Proc, redis_url: str, engine: sa.Engine) -> None:
    lives = [lc.success() for _ in range(50)]
    publish(redis_url, [e for life in lives for e in life.events])
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM job_events") == 300, 20)
    listener.signal(signal.SIGTERM)
    assert listener.popen.wait(10) == 0
    stopped = [e for e in log_events(listener) if e["event"] == "listen_stopped"]
    assert stopped[0]["events_applied"] == 300
    assert scalar(engine, "SELECT count(*) FROM jobs WHERE status = 'FINISHED'") == 50


def test_start_line_masks_passwords(service_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(service_env, CELERY_BROKER_URL="redis://:s3cret-broker@127.0.0.1:1/0",
               DATABASE_URL="postgresql://root:s3cret-db@127.0.0.1:1/nowhere")  # fmt: skip
    with running(job_tracker("listen"), env, tmp_path / "listen.log") as proc:
        wait_for(lambda: "database_unreachable" in proc.output(), 20)
        assert proc.popen.poll() is None  # keeps waiting for the database
        output = proc.output()
    assert "s3cret" not in output
    assert "postgresql://root:***@127.0.0.1:1/nowhere" in output


def test_two_listeners_at_once_write_what_one_would(
    service_env: dict[str, str], redis_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    args = job_tracker("listen", "--batch-size", "50", "--flush-interval", "0.01")
    with (
        running(
            [*args, "--spool-dir", str(tmp_path / "a")], service_env, tmp_path / "a.log"
        ) as first,
        running(
            [*args, "--spool-dir", str(tmp_path / "b")], service_env, tmp_path / "b.log"
        ) as second,
    ):
        wait_consuming(first)
        wait_consuming(second)
        lives = [lc.LIFECYCLES[name]() for name in sorted(lc.LIFECYCLES) for _ in range(40)]
        events = [e for life in lives for e in life.events]
        for i in range(0, len(events), 40):
            publish(redis_url, events[i : i + 40])
        wait_for(lambda: scalar(engine, "SELECT count(*) FROM job_events") == len(events), 30)
    from tests.test_merge import expected_row, stored_row

    for life in lives:
        assert stored_row(engine, life.id) == expected_row(lc.replay(life.events))
    applied = [
        e["events_applied"] for p in (first, second) for e in log_events(p)
        if e["event"] == "listen_stopped"
    ]  # fmt: skip
    assert applied == [len(events), len(events)]  # both wrote everything, concurrently


def test_app_option_takes_the_broker_from_the_celery_app(
    service_env: dict[str, str], redis_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    # Celery itself lets CELERY_BROKER_URL override an app's broker, as `celery -A` does.
    env = {k: v for k, v in service_env.items() if k != "CELERY_BROKER_URL"}
    env["INGEST_BROKER_URL"] = redis_url
    args = job_tracker("listen", "--app", "tests.apps:app")
    with running(args, env, tmp_path / "listen.log") as proc:
        wait_consuming(proc)
        assert f'"broker": "{redis_url}"' in proc.output()
        life = lc.success()
        publish(redis_url, life.events)
        wait_for(lambda: scalar(engine, "SELECT status FROM jobs WHERE id = :id", id=life.id)
                 == "FINISHED", 10)  # fmt: skip


def test_warns_about_workers_running_without_task_events(
    service_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    from examples import ingest
    from tests.helpers import celery_worker

    args = job_tracker("listen", "--no-events-warning-after", "2")
    worker_args = [a for a in celery_worker("examples.ingest", "quiet@%h") if a != "-E"]
    env = dict(service_env, INGEST_NO_EVENTS="1")
    with (
        running(args, service_env, tmp_path / "listen.log") as proc,
        running(worker_args, env, tmp_path / "worker.log") as worker,
    ):
        wait_for(lambda: "ready" in worker.output(), 60, what="worker ready")
        ingest.app.conf.broker_url = redis_url
        ingest.ocr.delay("doc", seconds=8)
        warned = wait_for(lambda: [e for e in log_events(proc)
                                   if e["event"] == "worker_without_task_events"], 20)  # fmt: skip
        assert warned[0]["worker"].startswith("quiet@")
        assert "-E" in warned[0]["hint"]
