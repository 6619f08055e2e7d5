"""Celery's exact wire format for task events, and realistic task lifecycles.

Everything here was checked against what real processes publish (celery 5.7 / kombu 5.7):
`bench/captures/*.jsonl` hold a prefork `celery worker -E` and a `task_send_sent_event`
producer captured on Redis and RabbitMQ by `python -m bench.capture`, and `verify_capture`
re-encodes every captured message with this module and compares the bytes.

The wire facts:
- body: `json.dumps` of one event dict, or of a *list* of events (prefork batches the
  worker's own task events into one `task.multi` message); keys in Celery's order, with
  `timestamp` and `type` last; default separators (", ", ": ").
- Redis: `PUBLISH /{db}.celeryev/<routing.key> <envelope>` where the envelope is the JSON
  of {body (base64), content-encoding, content-type, headers {hostname}, properties
  {delivery_mode 1, delivery_info {exchange, routing_key}, priority 0, body_encoding,
  delivery_tag (uuid4)}}.
- RabbitMQ: the raw JSON body published to the `celeryev` topic exchange with
  content_type, content_encoding, application_headers {hostname}, delivery_mode 1, priority 0.

The generator is deterministic for a seed and lazy (one in-flight group of tasks at a time),
so a stream of a million events costs no memory until it is encoded.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from celery.utils.time import utcoffset

EXCHANGE = "celeryev"
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
CAPTURES = Path(__file__).resolve().parent / "captures"

Event = dict[str, Any]
Source = Literal["producer", "worker", "child", "child_producer"]

# Outcome mix of the generated tasks (weights): plain success, failure, retried then
# succeeded, retries exhausted then failed.
OUTCOMES: dict[str, int] = {"ok": 75, "fail": 12, "retry_ok": 10, "retry_fail": 3}

TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 564, in trace_task
    R = retval = fun(*args, **kwargs)
                 ^^^^^^^^^^^^^^^^^^^^
  File "/srv/app/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 883, in __protected_call__
    return self.run(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/srv/app/examples/ingest.py", line {line}, in {func}
    {code}
{exc_type}: {exc_text}
"""  # noqa: E501


def routing_key(event_type: str) -> str:
    """The routing key Celery's EventDispatcher uses for one event type."""
    group, _, subject = event_type.partition("-")
    return f"{group}.{subject}"


@dataclass(slots=True)
class Message:
    """One broker message: a single event, or a prefork-style list of task events."""

    routing_key: str
    hostname: str  # the `hostname` header: the sending app's hostname
    events: list[Event]
    multi: bool

    @property
    def size(self) -> int:
        """Number of events in the message."""
        return len(self.events)


@dataclass(frozen=True, slots=True)
class Expected:
    """What a correct tracker must show for one task once all its events are in."""

    status: str  # FINISHED or FAILED
    events: int  # distinct task events, i.e. job_events rows
    retries: int
    percentage: int


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """Shape of a generated event stream."""

    tasks: int
    seed: int = 7
    multi_max: int = 8  # largest task.multi list; 0 sends every event as its own message
    inflight: int = 64  # tasks whose lifecycles interleave at a time
    workers: int = 4
    heartbeat_every: int = 5  # groups between rounds of worker-heartbeat events; 0: none

    @property
    def groups(self) -> int:
        """Number of in-flight groups."""
        return -(-self.tasks // self.inflight)


@dataclass(frozen=True, slots=True)
class Proc:
    """A sending process: its hostname and pid (its Lamport clock is kept per pid)."""

    hostname: str
    pid: int


@dataclass(slots=True)
class Step:
    """One event of a lifecycle, with the process that sends it."""

    source: Source
    proc: Proc
    event: Event


@dataclass(slots=True)
class TaskPlan:
    """The events of one task in the order its processes send them."""

    uuid: str
    worker: int
    steps: list[Step]
    expected: Expected


# ---------------------------------------------------------------- event dicts


def _head(proc: Proc, offset: float, task_id: str | None = None) -> Event:
    """The fields every event starts with (clock is set when the event is sent)."""
    event: Event = {"hostname": proc.hostname, "utcoffset": offset, "pid": proc.pid, "clock": 0}
    if task_id is not None:
        event["uuid"] = task_id
    return event


def _tail(event: Event, event_type: str) -> Event:
    """Append timestamp (set when encoded) and type, Celery's last two keys."""
    event["timestamp"] = 0.0
    event["type"] = event_type
    return event


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """Descriptive fields of one task, as Celery reprs them."""

    uuid: str
    name: str
    args: str
    kwargs: str
    root_id: str
    parent_id: str | None
    queue: str
    stage: str
    result: str


def sent_event(proc: Proc, offset: float, t: TaskInfo, retries: int, eta: str | None) -> Event:
    """task-sent, as a producer with task_send_sent_event sends it."""
    e = _head(proc, offset, t.uuid)
    e.update(
        root_id=t.root_id,
        parent_id=t.parent_id,
        name=t.name,
        args=t.args,
        kwargs=t.kwargs,
        retries=retries,
        eta=eta,
        expires=None,
        queue=t.queue,
        exchange="",
        routing_key=t.queue,
    )
    return _tail(e, "task-sent")


def received_event(proc: Proc, offset: float, t: TaskInfo, retries: int, eta: str | None) -> Event:
    """task-received (worker main process)."""
    e = _head(proc, offset, t.uuid)
    e.update(
        name=t.name,
        args=t.args,
        kwargs=t.kwargs,
        root_id=t.root_id,
        parent_id=t.parent_id,
        retries=retries,
        eta=eta,
        expires=None,
    )
    return _tail(e, "task-received")


def started_event(proc: Proc, offset: float, task_id: str) -> Event:
    """task-started (worker main process)."""
    return _tail(_head(proc, offset, task_id), "task-started")


def progress_event(
    proc: Proc, offset: float, task_id: str, pct: int, msg: str, stage: str
) -> Event:
    """task-progress, sent by the pool child with `self.send_event`."""
    e = _head(proc, offset, task_id)
    e.update(percentage=pct, message=msg, stage=stage)
    return _tail(e, "task-progress")


def succeeded_event(proc: Proc, offset: float, task_id: str, result: str, runtime: float) -> Event:
    """task-succeeded (worker main process)."""
    e = _head(proc, offset, task_id)
    e.update(result=result, runtime=runtime)
    return _tail(e, "task-succeeded")


def error_event(
    proc: Proc, offset: float, task_id: str, event_type: str, exception: str, traceback: str
) -> Event:
    """task-failed or task-retried (worker main process)."""
    e = _head(proc, offset, task_id)
    e.update(exception=exception, traceback=traceback)
    return _tail(e, event_type)


def heartbeat_event(proc: Proc, offset: float, processed: int) -> Event:
    """worker-heartbeat (every 2 s by default)."""
    e = _head(proc, offset)
    e.update(
        freq=2.0,
        active=2,
        processed=processed,
        loadavg=[1.12, 0.98, 0.91],
        sw_ident="py-celery",
        sw_ver="5.7.0",
        sw_sys="Linux",
    )
    return _tail(e, "worker-heartbeat")


# ---------------------------------------------------------------- lifecycles

KINDS: list[tuple[str, str, str, int]] = [
    # task name, queue, stage, weight
    ("examples.ingest.extract", "celery", "extract", 40),
    ("examples.ingest.chunk", "celery", "chunk", 20),
    ("examples.ingest.embed", "gpu", "embed", 20),
    ("examples.ingest.store", "celery", "store", 20),
]
PRIORITIES = ["LOW", "NORMAL", "NORMAL", "NORMAL", "HIGH", "URGENT"]
DOC_TYPES = ["pdf", "docx", "html", "txt"]


class Planner:
    """Plans deterministic, realistic task lifecycles for a StreamSpec."""

    def __init__(self, spec: StreamSpec, base_time: float) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.offset = float(utcoffset())
        prefix = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        self.id_prefix = str(prefix)[:24]
        self.producer = Proc("gen4242@bench-client", 4242)
        self.mains = [Proc(f"celery@bench-w{w}", 10_000 + 100 * w) for w in range(spec.workers)]
        self.eta = datetime.fromtimestamp(base_time + 60, UTC).isoformat()
        self.outcomes = list(OUTCOMES)
        self.outcome_weights = list(OUTCOMES.values())

    def task_id(self, index: int) -> str:
        """A uuid4-shaped, unique task id."""
        return f"{self.id_prefix}{index:012x}"

    def info(self, index: int) -> TaskInfo:
        """Name, args/kwargs reprs and ids of task `index`."""
        rng = self.rng
        name, queue, stage, _ = rng.choices(KINDS, weights=[k[3] for k in KINDS])[0]
        tid = self.task_id(index)
        doc = f"doc-{index:07d}"
        if stage == "extract" or index == 0:
            kwargs = repr(
                {
                    "document_id": doc,
                    "document_name": f"report-{index:07d}.pdf",
                    "document_type": rng.choice(DOC_TYPES),
                    "user_id": f"user-{rng.randrange(200):03d}",
                    "priority": rng.choice(PRIORITIES),
                    "metadata": {"source": "upload", "pages": rng.randrange(1, 40)},
                }
            )
            return TaskInfo(
                tid,
                name,
                "()",
                kwargs,
                tid,
                None,
                queue,
                stage,
                repr({"document_id": doc, "text": f"text of {doc}", "pages": 3}),
            )
        parent = self.task_id(index - 1)
        args = repr(
            (
                {
                    "document_id": doc,
                    "text": f"text of report-{index:07d}.pdf",
                    "pages": 3,
                    "chunks": 12,
                },
            )
        )
        return TaskInfo(
            tid, name, args, "{}", parent, parent, queue, stage, f"stored 12 vectors for {doc}"
        )

    def plan(self, index: int) -> TaskPlan:
        """The lifecycle of task `index`."""
        rng = self.rng
        t = self.info(index)
        w = rng.randrange(self.spec.workers)
        main = self.mains[w]
        child = Proc(main.hostname, main.pid + 1 + rng.randrange(2))
        child_producer = Proc(f"gen{child.pid}@bench-w{w}", child.pid)
        outcome = rng.choices(self.outcomes, weights=self.outcome_weights)[0]
        retries = {"ok": 0, "fail": 0, "retry_ok": 1, "retry_fail": 2}[outcome]
        off = self.offset
        steps = [
            Step("producer", self.producer, sent_event(self.producer, off, t, 0, None)),
            Step("worker", main, received_event(main, off, t, 0, None)),
            Step("worker", main, started_event(main, off, t.uuid)),
        ]
        pct = 0
        progress = 3 if outcome == "ok" else 2 if outcome == "fail" else 1
        for k in range(1, progress + 1):
            pct = 25 * k
            steps.append(
                Step(
                    "child",
                    child,
                    progress_event(
                        child, off, t.uuid, pct, f"{t.stage} step {k}/{progress + 1}", t.stage
                    ),
                )
            )
        exc_type, exc_text = "ConnectionError", f"https://files.example.com/{t.uuid} timed out"
        for attempt in range(1, retries + 1):
            tb = TRACEBACK.format(
                line=84,
                func="fetch",
                code="raise self.retry(exc=exc)",
                exc_type=exc_type,
                exc_text=exc_text,
            )
            steps += [
                Step(
                    "child_producer",
                    child_producer,
                    sent_event(child_producer, off, t, attempt, self.eta),
                ),
                Step("worker", main, received_event(main, off, t, attempt, self.eta)),
                Step(
                    "worker",
                    main,
                    error_event(main, off, t.uuid, "task-retried", f"{exc_type}({exc_text!r})", tb),
                ),
                Step("worker", main, started_event(main, off, t.uuid)),
            ]
            pct = 50
            steps.append(
                Step(
                    "child",
                    child,
                    progress_event(
                        child, off, t.uuid, pct, f"{t.stage} attempt {attempt + 1}", t.stage
                    ),
                )
            )
        if outcome in ("ok", "retry_ok"):
            runtime = round(0.05 + rng.random() * 2, 6)
            steps.append(
                Step("worker", main, succeeded_event(main, off, t.uuid, t.result, runtime))
            )
            status, pct = "FINISHED", 100
        else:
            text = f"cannot parse report-{index:07d}.pdf: not a valid file"
            if outcome == "retry_fail":
                exc_type, text = "ConnectionError", exc_text
            else:
                exc_type = "ValueError"
            tb = TRACEBACK.format(
                line=49,
                func=t.stage,
                code=f"raise {exc_type}(...)",
                exc_type=exc_type,
                exc_text=text,
            )
            steps.append(
                Step(
                    "worker",
                    main,
                    error_event(main, off, t.uuid, "task-failed", f"{exc_type}({text!r})", tb),
                )
            )
            status = "FAILED"
        return TaskPlan(t.uuid, w, steps, Expected(status, len(steps), retries, pct))


# ---------------------------------------------------------------- the stream


@dataclass
class Stream:
    """A lazily generated stream of messages; `expected` fills in as tasks are planned."""

    spec: StreamSpec
    base_time: float
    expected: dict[str, Expected] = field(default_factory=dict)
    clocks: dict[int, int] = field(default_factory=dict)

    def messages(self) -> Iterator[Message]:
        """Every message of the stream, in publishing order."""
        planner = Planner(self.spec, self.base_time)
        emit_rng = random.Random(self.spec.seed + 1)
        processed = 0
        for g in range(self.spec.groups):
            first = g * self.spec.inflight
            plans = [
                planner.plan(i)
                for i in range(first, min(self.spec.tasks, first + self.spec.inflight))
            ]
            for p in plans:
                self.expected[p.uuid] = p.expected
            yield from self._emit_group(plans, emit_rng)
            processed += len(plans)
            if self.spec.heartbeat_every and g % self.spec.heartbeat_every == 0:
                for main in planner.mains:
                    yield self._single(main, heartbeat_event(main, planner.offset, processed))

    def _emit_group(self, plans: list[TaskPlan], rng: random.Random) -> Iterator[Message]:
        """Interleave a group's lifecycles phase by phase; batch worker events per worker."""
        longest = max(len(p.steps) for p in plans)
        for phase in range(longest):
            batches: dict[int, list[Step]] = {}
            for p in plans:
                if phase >= len(p.steps):
                    continue
                step = p.steps[phase]
                if step.source == "worker" and self.spec.multi_max > 0:
                    batches.setdefault(p.worker, []).append(step)
                else:
                    yield self._single(step.proc, step.event)
            for steps in batches.values():
                yield from self._lists(steps, rng)

    def _lists(self, steps: list[Step], rng: random.Random) -> Iterator[Message]:
        """Split one worker's events into task.multi lists of 1..multi_max events."""
        i = 0
        while i < len(steps):
            n = rng.randint(1, self.spec.multi_max)
            chunk = steps[i : i + n]
            i += n
            for s in chunk:
                s.event["clock"] = self._tick(s.proc.pid)
            yield Message("task.multi", chunk[0].proc.hostname, [s.event for s in chunk], True)

    def _single(self, proc: Proc, event: Event) -> Message:
        """A message holding one event."""
        event["clock"] = self._tick(proc.pid)
        return Message(routing_key(event["type"]), proc.hostname, [event], False)

    def _tick(self, pid: int) -> int:
        """Advance the sending process's Lamport clock."""
        value = self.clocks.get(pid, 0) + 1
        self.clocks[pid] = value
        return value


# ---------------------------------------------------------------- encoding


def stamp(message: Message, ts: float, step: float) -> float:
    """Set the events' timestamps from `ts` on, `step` apart; return the next timestamp."""
    for event in message.events:
        event["timestamp"] = ts
        ts += step
    return ts


def body_bytes(message: Message) -> bytes:
    """The message body exactly as kombu's JSON serializer writes it."""
    return json.dumps(message.events if message.multi else message.events[0]).encode()


class TagMaker:
    """uuid4-shaped delivery tags, unique per message, without uuid4's cost per call."""

    def __init__(self) -> None:
        self.prefix = str(uuid.uuid4())[:24]
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:012x}"


def redis_channel(db: int, key: str) -> str:
    """The PUB/SUB channel kombu publishes an event to (fanout_prefix, fanout_patterns)."""
    return f"/{db}.{EXCHANGE}/{key}"


def redis_envelope(body: bytes, key: str, hostname: str, tag: str) -> dict[str, Any]:
    """The kombu virtual-transport envelope of an event message, as a dict."""
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": EXCHANGE, "routing_key": key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }


_ENVELOPE = (
    '{{"body": "{body}", "content-encoding": "utf-8", "content-type": "application/json", '
    '"headers": {{"hostname": {host}}}, "properties": {{"delivery_mode": 1, "delivery_info": '
    '{{"exchange": "celeryev", "routing_key": "{key}"}}, "priority": 0, "body_encoding": '
    '"base64", "delivery_tag": "{tag}"}}}}'
)


def redis_payload(body: bytes, key: str, hostname: str, tag: str) -> bytes:
    """The PUBLISH payload: `json.dumps(redis_envelope(...))`, built by a cheap template."""
    b64 = base64.b64encode(body).decode("ascii")
    return _ENVELOPE.format(body=b64, host=json.dumps(hostname), key=key, tag=tag).encode()


def amqp_properties(hostname: str) -> dict[str, Any]:
    """The AMQP basic properties kombu sets on an event message."""
    return {
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "application_headers": {"hostname": hostname},
        "delivery_mode": 1,
        "priority": 0,
    }


# ---------------------------------------------------------------- verification


def _message_from_events(body: Any, key: str, hostname: str) -> Message:
    """Rebuild a Message from a decoded captured body."""
    events = body if isinstance(body, list) else [body]
    return Message(key, hostname, events, isinstance(body, list))


def verify_redis_capture(path: Path) -> list[str]:
    """Re-encode each captured Redis message; return a description of every difference."""
    problems: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        captured = json.loads(line)
        raw: str = captured["data"]
        env = json.loads(raw)
        key = env["properties"]["delivery_info"]["routing_key"]
        hostname = env["headers"]["hostname"]
        body = base64.b64decode(env["body"])
        msg = _message_from_events(json.loads(body), key, hostname)
        if body_bytes(msg) != body:
            problems.append(f"line {n}: body differs")
        ours = redis_payload(body, key, hostname, env["properties"]["delivery_tag"])
        if ours != raw.encode():
            problems.append(f"line {n}: envelope differs")
        if captured["channel"] != redis_channel(int(captured["channel"][1:].split(".")[0]), key):
            problems.append(f"line {n}: channel differs")
    return problems


def verify_amqp_capture(path: Path) -> list[str]:
    """Re-encode each captured AMQP message; return a description of every difference."""
    problems: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        captured = json.loads(line)
        body = json.loads(captured["body"])
        hostname = captured["props"]["application_headers"]["hostname"]
        msg = _message_from_events(body, captured["rk"], hostname)
        if body_bytes(msg) != captured["body"].encode():
            problems.append(f"line {n}: body differs")
        if amqp_properties(hostname) != captured["props"]:
            problems.append(f"line {n}: properties differ")
        if captured["exchange"] != EXCHANGE:
            problems.append(f"line {n}: exchange differs")
    return problems


def captured_shapes(path: Path) -> dict[str, tuple[str, ...]]:
    """Key order of each task event type seen in a Redis capture."""
    shapes: dict[str, tuple[str, ...]] = {}
    for line in path.read_text().splitlines():
        env = json.loads(json.loads(line)["data"])
        body = json.loads(base64.b64decode(env["body"]))
        for event in body if isinstance(body, list) else [body]:
            shapes.setdefault(event["type"], tuple(event))
    return shapes


def verify_shapes(path: Path, tasks: int = 200) -> list[str]:
    """Compare the key order of generated events with the captured ones, type by type."""
    real = captured_shapes(path)
    problems: list[str] = []
    seen: set[str] = set()
    for msg in Stream(StreamSpec(tasks=tasks), 1.8e9).messages():
        for event in msg.events:
            kind = event["type"]
            if kind in seen or kind not in real:
                continue
            seen.add(kind)
            if tuple(event) != real[kind]:
                problems.append(f"{kind}: generated keys {tuple(event)} != captured {real[kind]}")
    missing = {t for t in real if t.startswith("task-")} - seen
    problems += [f"{kind}: captured but never generated" for kind in sorted(missing)]
    return problems
