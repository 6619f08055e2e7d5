"""Capture what a real prefork `celery worker -E` and a producer publish, then verify wire.py.

    python -m bench.capture --broker redis://localhost:6379/15 --out /tmp/redis.jsonl
    python -m bench.capture --broker amqp://guest:guest@127.0.0.1:5672// --out /tmp/amqp.jsonl

It subscribes to the event exchange (Redis: PSUBSCRIBE `/{db}.*`; RabbitMQ: a private
queue bound to `celeryev` with `#`), starts a real worker on examples.ingest, submits a
pipeline, a failing document, a task that retries then succeeds and one whose retries run
out, and writes every raw message as one JSON line. Then it re-encodes each captured
message with bench.wire and reports any byte that differs. `bench/captures/*.jsonl` were
made this way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import amqp

from bench import loadgen, wire

QUEUE = "jt-bench-capture"


def capture_redis(url: str, out: TextIO, stop: threading.Event) -> None:
    """Write every message published on the db's event channels."""
    client = loadgen.redis_client(url)
    sub = client.pubsub()
    sub.psubscribe(f"/{loadgen.redis_db(url)}.*")
    while not stop.is_set():
        m = sub.get_message(timeout=0.2)
        if m and m["type"] == "pmessage":
            line = {"channel": m["channel"].decode(), "data": m["data"].decode()}
            out.write(json.dumps(line) + "\n")
    sub.close()


def capture_amqp(url: str, out: TextIO, stop: threading.Event) -> None:
    """Write every message routed through the celeryev exchange."""
    pub = loadgen.AmqpPublisher(url)
    ch = pub.channel
    ok = ch.queue_declare("", exclusive=True, auto_delete=True)
    ch.queue_bind(ok.queue, wire.EXCHANGE, "#")

    def on_message(m: amqp.Message) -> None:
        props = {k: v.decode() if isinstance(v, bytes) else v for k, v in m.properties.items()}
        body = m.body.decode() if isinstance(m.body, bytes) else m.body
        info = m.delivery_info
        line = {"rk": info["routing_key"], "exchange": info["exchange"], "props": props}
        out.write(json.dumps({**line, "body": body}, default=str) + "\n")

    ch.basic_consume(ok.queue, callback=on_message, no_ack=True)
    while not stop.is_set():
        try:
            pub.conn.drain_events(timeout=0.2)
        except TimeoutError:
            continue
    pub.close()


def submit(queue: str) -> None:
    """Send the example tasks (task_send_sent_event is on in examples.ingest)."""
    from examples import ingest

    kw: dict[str, Any] = {"queue": queue}
    doc = {"document_id": "doc-1", "document_name": "a.pdf", "document_type": "pdf",
           "user_id": "user-7", "priority": "HIGH", "metadata": {"k": 1}}  # fmt: skip
    ingest.extract.apply_async(kwargs=doc, **kw)
    ingest.extract.apply_async(kwargs={**doc, "document_id": "doc-2", "document_type": "corrupt"},
                               **kw)  # fmt: skip
    ingest.chunk.apply_async(({"document_id": "doc-1", "pages": 3},), **kw)
    ingest.fetch_remote.apply_async(("http://x",), {"fail_times": 1}, **kw)
    ingest.fetch_unavailable.apply_async(("http://y",), **kw)


def main(argv: list[str] | None = None) -> None:
    """Capture a real worker's events and verify bench.wire against them."""
    p = argparse.ArgumentParser(prog="python -m bench.capture", description=main.__doc__)
    p.add_argument("--broker", default="redis://localhost:6379/15")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=12.0)
    args = p.parse_args(argv)
    redis = args.broker.startswith("redis")
    env = dict(os.environ, CELERY_BROKER_URL=args.broker, INGEST_STEP_DELAY="0.01")
    os.environ.update(env)
    stop = threading.Event()
    worker_log = args.out.with_suffix(".worker.log").open("w")
    with args.out.open("w") as out:
        target = capture_redis if redis else capture_amqp
        thread = threading.Thread(target=target, args=(args.broker, out, stop), daemon=True)
        thread.start()
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "examples.ingest", "worker", "-E", "-Q", QUEUE,
             "-c", "2", "-n", "capture@%h", "--pool", "prefork", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env=env, cwd=wire.CAPTURES.parent.parent, start_new_session=True,
            stdout=worker_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            time.sleep(5)
            submit(QUEUE)
            time.sleep(args.seconds)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
            time.sleep(1)
            stop.set()
            thread.join(5)
            worker_log.close()
    if not redis:
        pub = loadgen.AmqpPublisher(args.broker)
        pub.delete_queue(QUEUE)
        pub.close()
    verify = wire.verify_redis_capture if redis else wire.verify_amqp_capture
    problems = verify(args.out)
    if redis:
        problems += wire.verify_shapes(args.out)
    lines = len(args.out.read_text().splitlines())
    print(f"{lines} messages captured in {args.out}; {len(problems)} differences")
    for problem in problems:
        print("  " + problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
