"""Fault injection against the real services: outages, SIGKILL, restarts, gaps, orphans.

PostgreSQL and Redis "go away" through a TCP proxy between them and the tracker only
(tests/proxy.py), so the outage is real for the tracker while the rest of the machine,
and the worker, keep their services.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.events.event import get_exchange
from kombu.connection import Connection
from kombu.messaging import Producer
from sqlalchemy.engine import make_url

from examples import ingest
from tests import lifecycles as lc
from tests.helpers import (
    Proc,
    celery_worker,
    fetch_all,
    job_tracker,
    running,
    scalar,
    wait_consuming,
    wait_for,
)
from tests.proxy import Proxy
from tests.test_listen import log_events
from tests.test_merge import expected_row, stored_row

pytestmark = pytest.mark.e2e


def exchange_name() -> str:
    """An event exchange of this test run only (RabbitMQ is shared with other users)."""
    return f"celeryev.jt-test-{os.getpid()}"


class Publisher:
    """Publishes lifecycles on the event exchange, optionally from a background thread."""

    def __init__(self, broker_url: str, exchange: str = "celeryev") -> None:
        self.conn = Connection(broker_url)
        ex = get_exchange(self.conn, name=exchange)
        self.producer = Producer(self.conn.channel(), exchange=ex)
        self.published: list[dict[str, Any]] = []

    def send(self, events: list[dict[str, Any]]) -> None:
        """One prefork-style batched message."""
        import orjson

        self.producer.publish(orjson.dumps(events), routing_key="task.multi",
                              content_type="application/json", content_encoding="utf-8",
                              serializer=None, delivery_mode=1)  # fmt: skip
        self.published.extend(events)

    def stream(self, lives: list[lc.Lifecycle], seconds: float) -> threading.Thread:
        """Publish the lifecycles spread evenly over `seconds` in a thread."""
        events = [e for life in lives for e in life.events]
        chunks = [events[i : i + 20] for i in range(0, len(events), 20)]

        def run() -> None:
            for chunk in chunks:
                self.send(chunk)
                time.sleep(seconds / len(chunks))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Release the connection."""
        self.conn.release()


def make_lives(n: int) -> list[lc.Lifecycle]:
    """n lifecycles of every kind, with current timestamps."""
    names = sorted(lc.LIFECYCLES)
    return [lc.LIFECYCLES[names[i % len(names)]]() for i in range(n)]


def assert_all_correct(engine: sa.Engine, lives: list[lc.Lifecycle]) -> None:
    """Every job row is what the fold of its events says, and history has no duplicate."""
    for life in lives:
        assert stored_row(engine, life.id) == expected_row(lc.replay(life.events))
    events = sum(len(life.events) for life in lives)
    assert scalar(engine, "SELECT count(*) FROM job_events") == events


def wait_all_events(engine: sa.Engine, lives: list[lc.Lifecycle], timeout: float) -> None:
    """Wait until every event of these lifecycles is stored."""
    total = sum(len(life.events) for life in lives)
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM job_events") == total, timeout,
             interval=0.2, what=f"{total} history rows")  # fmt: skip


@pytest.fixture
def pg_proxy(db_url: str) -> Iterator[tuple[Proxy, str]]:
    """A proxy in front of PostgreSQL and the test database's URL through it."""
    target = make_url(db_url)  # the embedded server listens on its own port
    proxy = Proxy(target.host or "127.0.0.1", target.port or 5432)
    url = target.set(host="127.0.0.1", port=proxy.port)
    yield proxy, url.render_as_string(hide_password=False)
    proxy.close()


@pytest.mark.parametrize("transport", ["redis", "amqp"])
def test_postgres_outage_mid_stream_loses_nothing(
    transport: str, pg_proxy: tuple[Proxy, str], service_env: dict[str, str], redis_url: str,
    engine: sa.Engine, tmp_path: Path,
) -> None:  # fmt: skip
    if transport == "amqp" and not os.environ.get("AMQP_URL"):
        pytest.skip("AMQP_URL is not set: RabbitMQ tests need a RabbitMQ server")
    broker = redis_url if transport == "redis" else os.environ["AMQP_URL"]
    proxy, proxied_db = pg_proxy
    env = dict(service_env, DATABASE_URL=proxied_db, CELERY_BROKER_URL=broker)
    args = job_tracker("listen", "--buffer-messages", "20", "--event-exchange", exchange_name())
    if transport == "amqp":
        args += ["--queue", f"jt-test-outage-{os.getpid()}", "--prefetch", "100"]
    lives = make_lives(280)
    publisher = Publisher(broker, exchange_name())
    with running(args, env, tmp_path / "listen.log") as proc:
        wait_consuming(proc)
        stream = publisher.stream(lives, seconds=14)
        time.sleep(3)
        proxy.cut()
        outage_started = time.monotonic()
        time.sleep(20)
        proxy.restore()
        recovered_at = time.monotonic()
        stream.join(30)
        wait_all_events(engine, lives, 60)
        recovery = time.monotonic() - recovered_at
        logged = {e["event"] for e in log_events(proc)}
    publisher.close()
    assert_all_correct(engine, lives)
    assert "batch_retry" in logged
    if transport == "redis":
        assert "spooling" in logged  # the in-memory buffer of 20 messages overflowed to disk
    outage = recovered_at - outage_started
    print(f"\n{transport}: {len(publisher.published)} events, outage {outage:.0f} s, "
          f"caught up {recovery:.1f} s after recovery")  # fmt: skip


def test_stop_during_outage_spools_and_next_start_replays(
    pg_proxy: tuple[Proxy, str], service_env: dict[str, str], redis_url: str,
    engine: sa.Engine, tmp_path: Path,
) -> None:  # fmt: skip
    proxy, proxied_db = pg_proxy
    env = dict(service_env, DATABASE_URL=proxied_db)
    args = job_tracker("listen", "--event-exchange", exchange_name())
    lives = make_lives(70)
    publisher = Publisher(redis_url, exchange_name())
    with running(args, env, tmp_path / "first.log") as first:
        wait_consuming(first)
        proxy.cut()
        for life in lives:
            publisher.send(life.events)
        wait_for(lambda: '"batch_retry"' in first.output(), 10)
        started = time.monotonic()
        first.signal(signal.SIGTERM)
        assert first.popen.wait(20) == 0
        assert time.monotonic() - started < 10  # shutdown grace (5 s) + flush, not forever
        spooled = [e for e in log_events(first) if e["event"] == "spooled_at_stop"]
    assert spooled
    assert scalar(engine, "SELECT count(*) FROM job_events") == 0
    proxy.restore()
    with running(args, env, tmp_path / "second.log") as second:
        wait_for(lambda: '"spool_replay"' in second.output(), 20)
        wait_all_events(engine, lives, 30)
    publisher.close()
    assert_all_correct(engine, lives)


def test_second_signal_exits_at_once(
    pg_proxy: tuple[Proxy, str], service_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    proxy, proxied_db = pg_proxy
    env = dict(service_env, DATABASE_URL=proxied_db)
    publisher = Publisher(redis_url, exchange_name())
    args = job_tracker("listen", "--event-exchange", exchange_name())
    with running(args, env, tmp_path / "listen.log") as proc:
        wait_consuming(proc)
        proxy.cut()
        publisher.send(lc.success().events)
        wait_for(lambda: '"batch_retry"' in proc.output(), 10)
        proc.signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(5) == 1
        assert time.monotonic() - started < 2
        assert '"forced_exit"' in proc.output()
    publisher.close()


# ---------------------------------------------------------------- RabbitMQ at-least-once


@pytest.fixture
def durable_queue(amqp_url: str) -> Iterator[str]:
    """The name of a durable queue for this test, deleted afterwards."""
    name = f"jt-test-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    with Connection(amqp_url) as conn:
        conn.channel().queue_delete(name)


@pytest.fixture
def amqp_publisher(amqp_url: str) -> Iterator[Publisher]:
    """A publisher on this run's event exchange of RabbitMQ."""
    publisher = Publisher(amqp_url, exchange_name())
    yield publisher
    publisher.close()


def amqp_listen(queue: str, batch_size: int, prefetch: int) -> list[str]:
    """argv of an at-least-once listener on a durable queue."""
    return job_tracker("listen", "--queue", queue, "--event-exchange", exchange_name(),
                       "--batch-size", str(batch_size), "--prefetch", str(prefetch))  # fmt: skip


def test_sigkill_mid_stream_on_rabbitmq_loses_and_duplicates_nothing(
    amqp_url: str, durable_queue: str, amqp_publisher: Publisher,
    service_env: dict[str, str], engine: sa.Engine, tmp_path: Path,
) -> None:  # fmt: skip
    env = dict(service_env, CELERY_BROKER_URL=amqp_url)
    args = amqp_listen(durable_queue, batch_size=100, prefetch=200)
    lives = make_lives(700)

    with running(args, env, tmp_path / "first.log") as first:
        wait_consuming(first)
        stream = amqp_publisher.stream(lives, seconds=6)
        wait_for(lambda: scalar(engine, "SELECT count(*) FROM job_events") > 500, 20)
        first.signal(signal.SIGKILL)
        first.popen.wait(10)
    killed_at = scalar(engine, "SELECT count(*) FROM job_events")
    stream.join(30)
    restarted = time.monotonic()
    with running(args, env, tmp_path / "second.log") as second:
        wait_consuming(second)
        wait_all_events(engine, lives, 60)
        recovered = time.monotonic() - restarted
    total = sum(len(life.events) for life in lives)
    assert killed_at < total
    assert_all_correct(engine, lives)
    print(f"\nSIGKILL at {killed_at}/{total} events; all {len(lives)} jobs correct "
          f"{recovered:.1f} s after restart")  # fmt: skip


def test_two_trackers_on_one_rabbitmq_queue_share_the_load(
    amqp_url: str, durable_queue: str, amqp_publisher: Publisher,
    service_env: dict[str, str], engine: sa.Engine, tmp_path: Path,
) -> None:  # fmt: skip
    env = dict(service_env, CELERY_BROKER_URL=amqp_url)
    args = amqp_listen(durable_queue, batch_size=50, prefetch=20)
    lives = make_lives(350)

    with (
        running([*args, "--spool-dir", str(tmp_path / "a")], env, tmp_path / "a.log") as a,
        running([*args, "--spool-dir", str(tmp_path / "b")], env, tmp_path / "b.log") as b,
    ):
        wait_consuming(a)
        wait_consuming(b)
        amqp_publisher.stream(lives, seconds=3).join(30)
        wait_all_events(engine, lives, 60)
    applied = [applied_events(p) for p in (a, b)]
    assert all(n > 0 for n in applied), applied  # competing consumers: both worked
    assert sum(applied) >= sum(len(life.events) for life in lives)
    assert_all_correct(engine, lives)
    print(f"\ntwo trackers applied {applied} events; {len(lives)} jobs correct")


def applied_events(proc: Proc) -> int:
    """Events a stopped listener says it applied."""
    return int(
        next(e for e in log_events(proc) if e["event"] == "listen_stopped")["events_applied"]
    )


# ---------------------------------------------------------------- gaps, repair, orphans


def test_redis_gap_is_reported_and_repaired_from_the_result_backend(
    service_env: dict[str, str], redis_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    redis = make_url(redis_url)
    proxy = Proxy("127.0.0.1", redis.port or 6379)
    backend = f"redis://127.0.0.1:{redis.port or 6379}/13"
    proxied_broker = f"redis://127.0.0.1:{proxy.port}/{redis.database}"
    tracker_env = dict(service_env, CELERY_BROKER_URL=proxied_broker)
    worker_env = dict(service_env, CELERY_RESULT_BACKEND=backend)
    client = Celery("gap-client", broker=redis_url, backend=backend, set_as_current=False)
    args = job_tracker("listen", "--result-backend", backend)
    try:
        with (
            running(args, tracker_env, tmp_path / "listen.log") as tracker,
            running(celery_worker("examples.ingest", f"gap-{os.getpid()}@%h"), worker_env,
                    tmp_path / "worker.log") as worker,
        ):  # fmt: skip
            wait_consuming(tracker)
            wait_for(lambda: "ready" in worker.output(), 60, what="worker ready")
            long = client.send_task("examples.ingest.ocr", args=("doc-gap",), kwargs={"seconds": 4})
            status = lambda: scalar(engine, "SELECT status FROM jobs WHERE id = :id", id=long.id)  # noqa: E731
            wait_for(lambda: status() == "PROCESSING", 30, what="ocr running")
            proxy.cut()
            gap_started = time.monotonic()
            assert long.get(timeout=30) == "ocr done"  # finishes while the tracker is cut off
            time.sleep(1)
            proxy.restore()
            wait_for(lambda: status() == "FINISHED", 40, what="repaired from the backend")
            repaired_after = time.monotonic() - gap_started
            gap = wait_for(
                lambda: [e for e in log_events(tracker) if e["event"] == "event_gap"], 10
            )
        rows = fetch_all(engine, "SELECT event_type, hostname, details FROM job_events WHERE "
                         "job_id = :id AND event_type = 'task-succeeded'", id=long.id)  # fmt: skip
        assert rows[0]["details"]["source"] == "result-backend"
        assert rows[0]["hostname"] == "job-tracker (reconcile)"
        assert gap[0]["duration_s"] > 0
        assert gap[0]["gaps"] == 1
        print(
            f"\nredis gap {gap[0]['duration_s']} s, repaired {repaired_after:.1f} s after the cut"
        )
    finally:
        proxy.close()
        client.close()


def test_jobs_of_a_vanished_worker_are_flagged_orphaned(
    service_env: dict[str, str], redis_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    ingest.app.conf.broker_url = redis_url
    args = job_tracker("listen")
    with running(args, service_env, tmp_path / "listen.log") as tracker:
        wait_consuming(tracker)
        worker_args = celery_worker("examples.ingest", f"doomed-{os.getpid()}@%h")
        with running(worker_args, service_env, tmp_path / "worker.log") as worker:
            wait_for(lambda: "ready" in worker.output(), 60, what="worker ready")
            long = ingest.ocr.delay("doc-orphan", seconds=60)
            wait_for(lambda: scalar(engine, "SELECT percentage FROM jobs WHERE id = :id",
                                    id=long.id) or 0, 30, what="ocr progress")  # fmt: skip
            worker.signal(signal.SIGKILL)  # no worker-offline: its heartbeats just stop
        row = wait_for(lambda: fetch_all(engine, "SELECT * FROM jobs WHERE id = :id AND "
                       "metadata ? 'orphaned'", id=long.id), 30)[0]  # fmt: skip
    assert row["status"] == "PROCESSING"  # not terminal: a redelivery may still finish it
    assert row["metadata"]["orphaned"] is True
    assert row["metadata"]["orphaned_reason"] == "heartbeat-lost"
    assert row["summary"].startswith(f"Orphaned: doomed-{os.getpid()}@")


def test_health_reports_live_and_dead_trackers(
    service_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    import subprocess

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run(job_tracker("health", "--database", db_url, "--max-age", "10"),
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip

    none = health()
    assert none.returncode == 1
    assert "no job-tracker listener has recorded a heartbeat" in none.stderr
    with running(job_tracker("listen"), service_env, tmp_path / "listen.log") as proc:
        wait_consuming(proc)
        alive = wait_for(lambda: [r for r in [health()] if r.returncode == 0], 15)[0]
        assert alive.stdout.startswith("alive")
        assert f":{proc.popen.pid}:" in alive.stdout
    assert health().returncode == 1  # a clean stop removes the row
