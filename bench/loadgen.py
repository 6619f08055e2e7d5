"""Publish generated task lifecycles to Redis or RabbitMQ in Celery's wire format.

Payloads are encoded before the clock starts (`prepare`), so publishing costs only the
client's pipelining: about 7 µs of generator CPU per message (≈ 4.6 µs per event) with
redis-py. Modes:
- flat out (`publish_flat`): pipelined PUBLISH as fast as Redis takes them (a burst);
- flat out with back-pressure (`publish_backpressured`): as fast as the subscriber drains,
  keeping its Redis output buffer under a high-water mark (never near the 32 MB limit), so
  the consumer is saturated but never disconnected: the sustained-throughput mode;
- fixed rate (`publish_at_rate`): every message leaves at its planned time; its events'
  timestamps *are* that planned time, so lag = commit time - timestamp;
- RabbitMQ (`AmqpPublisher`): py-amqp `basic_publish` to the `celeryev` topic exchange.

Run it by hand: `python -m bench.loadgen --broker redis://localhost:6379/14 --tasks 1000`.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import amqp
import redis

from bench import wire


@dataclass
class Prepared:
    """A stream encoded for one broker: payloads plus per-message task-event counts."""

    spec: wire.StreamSpec
    channels: list[bytes]  # Redis channel (or AMQP routing key) per message
    payloads: list[bytes]  # Redis envelope (or AMQP body) per message
    hostnames: list[str]
    task_events: array[int]  # task events in each message
    group_ends: list[int]  # message index just after each in-flight group
    expected: dict[str, wire.Expected]
    send_at: array[float] = field(default_factory=lambda: array("d"))  # first event's timestamp
    first_ts: float = 0.0
    last_ts: float = 0.0
    encode_s: float = 0.0

    @property
    def messages(self) -> int:
        """Number of messages."""
        return len(self.payloads)

    @property
    def total_task_events(self) -> int:
        """Number of task events (the ones a tracker stores)."""
        return sum(self.task_events)

    def prefix_for(self, events: int) -> tuple[int, int]:
        """(messages, task events) of the shortest whole-group prefix with >= `events`."""
        count = 0
        start = 0
        for end in self.group_ends:
            count += sum(self.task_events[start:end])
            start = end
            if count >= events:
                return end, count
        return self.messages, count


def _task_count(msg: wire.Message) -> int:
    """Task events in a message."""
    return sum(1 for e in msg.events if e["type"].startswith("task-"))


def prepare(
    spec: wire.StreamSpec,
    target: str,
    db: int = 0,
    start_ts: float | None = None,
    step: float = 1e-5,
) -> Prepared:
    """Generate and encode a whole stream for `target` ('redis' or 'amqp').

    Event timestamps run from `start_ts` (default: now) `step` seconds apart.
    """
    began = time.perf_counter()
    stream = wire.Stream(spec, time.time())
    tags = wire.TagMaker()
    prep = Prepared(spec, [], [], [], array("I"), [], stream.expected)
    ts = prep.first_ts = time.time() if start_ts is None else start_ts
    channel_cache: dict[str, bytes] = {}
    group_counter = _GroupTracker(spec)
    for msg in stream.messages():
        prep.send_at.append(ts)
        ts = wire.stamp(msg, ts, step)
        body = wire.body_bytes(msg)
        key = msg.routing_key
        if target == "redis":
            channel = channel_cache.get(key)
            if channel is None:
                channel = channel_cache[key] = wire.redis_channel(db, key).encode()
            prep.channels.append(channel)
            prep.payloads.append(wire.redis_payload(body, key, msg.hostname, tags()))
        else:
            prep.channels.append(key.encode())
            prep.payloads.append(body)
            prep.hostnames.append(msg.hostname)
        prep.task_events.append(_task_count(msg))
        group_counter.after(msg, prep)
    prep.group_ends.append(prep.messages)
    prep.last_ts = ts
    prep.encode_s = time.perf_counter() - began
    return prep


@dataclass
class _GroupTracker:
    """Finds the group boundaries of a stream: after the last terminal event of a group."""

    spec: wire.StreamSpec
    open_tasks: int = 0
    seen: set[str] = field(default_factory=set)

    def after(self, msg: wire.Message, prep: Prepared) -> None:
        """Record a boundary once every task of the current group has finished."""
        for event in msg.events:
            kind = event["type"]
            if kind == "task-sent" and event["retries"] == 0:
                self.open_tasks += 1
            elif kind in ("task-succeeded", "task-failed"):
                self.open_tasks -= 1
        if self.open_tasks == 0 and msg.events[-1]["type"] in ("task-succeeded", "task-failed"):
            prep.group_ends.append(prep.messages)


# ---------------------------------------------------------------- Redis


def redis_client(url: str) -> redis.Redis:
    """A redis-py client for a broker URL."""
    return redis.Redis.from_url(url)


def redis_db(url: str) -> int:
    """The db number of a redis:// URL."""
    path = urlparse(url).path.strip("/")
    return int(path) if path else 0


def publish_flat(
    client: redis.Redis, prep: Prepared, start: int = 0, end: int | None = None, chunk: int = 1000
) -> float:
    """Publish messages [start, end) flat out, pipelined; return the seconds it took."""
    end = prep.messages if end is None else end
    began = time.perf_counter()
    channels, payloads = prep.channels, prep.payloads
    for i in range(start, end, chunk):
        pipe = client.pipeline(transaction=False)
        for j in range(i, min(i + chunk, end)):
            pipe.execute_command("PUBLISH", channels[j], payloads[j])
        pipe.execute()
    return time.perf_counter() - began


def subscribers(client: redis.Redis, db: int) -> list[dict[str, Any]]:
    """The PUB/SUB clients on `db` (event consumers), from CLIENT LIST."""
    return [c for c in client.client_list(_type="pubsub") if str(c.get("db")) == str(db)]


def max_omem(client: redis.Redis, db: int) -> int:
    """The largest output buffer (bytes) among the subscribers on `db`."""
    return max((int(c.get("omem", 0)) for c in subscribers(client, db)), default=0)


def publish_backpressured(
    client: redis.Redis,
    prep: Prepared,
    db: int,
    start: int = 0,
    end: int | None = None,
    high: int = 4 << 20,
    low: int = 1 << 20,
    chunk: int = 500,
) -> float:
    """Publish flat out, but pause while a subscriber's output buffer is above `high`
    until it drops below `low`; return the seconds it took."""
    end = prep.messages if end is None else end
    began = time.perf_counter()
    for i in range(start, end, chunk):
        if max_omem(client, db) > high:
            while max_omem(client, db) > low:
                time.sleep(0.01)
        publish_flat(client, prep, i, min(i + chunk, end), chunk)
    return time.perf_counter() - began


@dataclass
class RatePlan:
    """Messages encoded for a fixed-rate run: send times and their timestamps agree."""

    prep: Prepared
    send_at: array[float]
    rate: float


def prepare_at_rate(spec: wire.StreamSpec, db: int, rate: float, lead: float = 1.0) -> RatePlan:
    """Encode a stream whose events are due `1 / rate` seconds apart, from a start chosen
    after the encoding will have finished (estimated on a small stream).

    Each event's timestamp is the moment it is meant to be published, and a message is
    due at its first event's timestamp, so lag = visible time - timestamp.
    """
    probe = prepare(wire.StreamSpec(tasks=min(spec.tasks, 500), seed=spec.seed + 99), "redis", db)
    per_task = probe.encode_s / max(1, probe.spec.tasks)
    start = time.time() + lead + 2.0 * per_task * spec.tasks
    prep = prepare(spec, "redis", db, start_ts=start, step=1.0 / rate)
    return RatePlan(prep, prep.send_at, rate)


def publish_at_rate(client: redis.Redis, plan: RatePlan, tick: float = 0.005) -> dict[str, float]:
    """Send the messages that are due once per `tick`, pipelined; report the lateness.

    A message leaves at most one tick (5 ms) after its planned time, never before it, so
    a lag measured from the events' timestamps is overstated by at most that.
    """
    prep, due = plan.prep, plan.send_at
    i, worst, late_sum, ticks = 0, 0.0, 0.0, 0
    next_tick = due[0] if due else time.time()
    while i < prep.messages:
        time.sleep(max(0.0, next_tick - time.time()))
        now = time.time()
        j = bisect.bisect_right(due, now, lo=i)
        if j > i:
            lateness = now - due[i]
            worst, late_sum, ticks = max(worst, lateness), late_sum + lateness, ticks + 1
            publish_flat(client, prep, i, j, chunk=j - i)
            i = j
        next_tick = max(now + tick, due[i]) if i < prep.messages else now
    return {"max_late_s": worst, "mean_late_s": late_sum / max(1, ticks)}


def probe_payload(db: int, tags: wire.TagMaker | None = None) -> tuple[bytes, bytes]:
    """A worker-heartbeat message used to see whether a subscriber is listening."""
    proc = wire.Proc("celery@bench-probe", 1)
    event = wire.heartbeat_event(proc, 0.0, 0)
    event["timestamp"] = time.time()
    msg = wire.Message("worker.heartbeat", proc.hostname, [event], False)
    tag = (tags or wire.TagMaker())()
    payload = wire.redis_payload(wire.body_bytes(msg), msg.routing_key, msg.hostname, tag)
    return wire.redis_channel(db, msg.routing_key).encode(), payload


def wait_subscribed(client: redis.Redis, db: int, timeout: float = 30.0) -> float:
    """Publish probe heartbeats until a subscriber receives one; return the wait."""
    began = time.monotonic()
    channel, payload = probe_payload(db)
    while time.monotonic() - began < timeout:
        if int(client.publish(channel, payload)) > 0:
            return time.monotonic() - began
        time.sleep(0.05)
    raise TimeoutError(f"no subscriber on redis db {db} after {timeout}s")


# ---------------------------------------------------------------- RabbitMQ


class AmqpPublisher:
    """Publishes prepared AMQP bodies to the celeryev topic exchange with py-amqp."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        vhost = unquote(parsed.path[1:]) if parsed.path not in ("", "/") else "/"
        self.conn = amqp.Connection(
            f"{parsed.hostname or 'localhost'}:{parsed.port or 5672}",
            userid=unquote(parsed.username or "guest"),
            password=unquote(parsed.password or "guest"),
            virtual_host=vhost or "/",
        )
        self.conn.connect()
        self.channel = self.conn.channel()
        self.channel.exchange_declare(wire.EXCHANGE, "topic", durable=True, auto_delete=False)

    def declare_queue(self, name: str) -> None:
        """A durable queue bound to every event, as `job-tracker listen --queue` declares it."""
        self.channel.queue_declare(name, durable=True, auto_delete=False, exclusive=False)
        self.channel.queue_bind(name, wire.EXCHANGE, "#")
        self.channel.queue_purge(name)

    def queue_depth(self, name: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue."""
        ok = self.channel.queue_declare(name, passive=True)
        return int(ok.message_count), int(ok.consumer_count)

    def delete_queue(self, name: str) -> None:
        """Delete a queue (ignoring one that does not exist)."""
        try:
            self.channel.queue_delete(name)
        except amqp.exceptions.NotFound:
            self.channel = self.conn.channel()

    def publish(self, prep: Prepared, start: int = 0, end: int | None = None) -> float:
        """Publish prepared bodies flat out; return the seconds it took."""
        end = prep.messages if end is None else end
        began = time.perf_counter()
        props_cache: dict[str, dict[str, Any]] = {}
        publish = self.channel.basic_publish
        for i in range(start, end):
            host = prep.hostnames[i]
            props = props_cache.get(host)
            if props is None:
                props = props_cache[host] = wire.amqp_properties(host)
            msg = amqp.Message(prep.payloads[i], **props)
            publish(msg, exchange=wire.EXCHANGE, routing_key=prep.channels[i].decode())
        return time.perf_counter() - began

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self.conn.close()


def iter_chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges covering range(n) in steps of `size`."""
    for i in range(0, n, size):
        yield i, min(n, i + size)


def main(argv: list[str] | None = None) -> None:
    """Publish N task lifecycles once (flat out or at a fixed rate) and print a summary."""
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=main.__doc__)
    p.add_argument("--broker", default="redis://localhost:6379/14")
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0, help="events/s (Redis); 0: flat out")
    p.add_argument("--multi-max", type=int, default=8, help="0: no task.multi lists")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    spec = wire.StreamSpec(tasks=args.tasks, seed=args.seed, multi_max=args.multi_max)
    if args.broker.startswith("redis"):
        db = redis_db(args.broker)
        client = redis_client(args.broker)
        if args.rate > 0:
            plan = prepare_at_rate(spec, db, args.rate)
            late = publish_at_rate(client, plan)
            prep = plan.prep
            took = plan.send_at[-1] - plan.send_at[0] if plan.send_at else 0.0
            print(f"lateness: {late}")
        else:
            prep = prepare(spec, "redis", db)
            took = publish_flat(client, prep)
    else:
        prep = prepare(spec, "amqp")
        pub = AmqpPublisher(args.broker)
        took = pub.publish(prep)
        pub.close()
    events = prep.total_task_events
    print(
        f"published {prep.messages} messages, {events} task events, {len(prep.expected)} "
        f"tasks in {took:.2f}s ({events / max(took, 1e-9):,.0f} task events/s); "
        f"encoding took {prep.encode_s:.2f}s"
    )


if __name__ == "__main__":
    main()
