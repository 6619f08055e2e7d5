"""Decoding of Celery event messages into validated events (pure, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Fields the receiver adds or rewrites; they are not part of an event's identity.
RECEIVER_FIELDS = frozenset({"local_received"})
MAX_ID_CHARS = 255
# Timestamps outside this window are clock garbage, not an event time.
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 9_999_999_999.0


@dataclass(frozen=True, slots=True)
class Event:
    """One validated Celery event, as its sender sent it."""

    type: str
    uuid: str | None
    timestamp: float
    hostname: str | None
    received_at: float
    key: str
    fields: Mapping[str, Any]

    @property
    def is_task_event(self) -> bool:
        """True for `task-*` events that name a task id."""
        return self.uuid is not None and self.type.startswith("task-")


@dataclass(slots=True)
class Decoded:
    """What one broker message held: valid events and the reasons others were skipped."""

    events: list[Event]
    errors: list[str]


Body = bytes | str | Mapping[str, Any] | list[Any]


def decode_message(body: Body, received_at: float) -> Decoded:
    """Decode a message body (one event, or prefork's batched list) into events."""
    result = Decoded(events=[], errors=[])
    try:
        payload = _parse_json(body)
    except ValueError as exc:
        result.errors.append(f"body is not JSON: {str(exc)[:200]}")
        return result
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        event_or_error = parse_event(item, received_at)
        if isinstance(event_or_error, Event):
            result.events.append(event_or_error)
        else:
            result.errors.append(event_or_error)
    return result


def _parse_json(body: Body) -> Any:
    """Parse a JSON body; already-decoded bodies pass through."""
    if isinstance(body, Mapping | list):
        return _clean(body)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits and lone surrogates, which json accepts.
        return _clean(json.loads(body))
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else bytes(body)
    # NUL and lone surrogates cannot be stored by PostgreSQL; only escaped text can hold them.
    return _clean(parsed) if b"\\u0000" in raw or b"\\ud" in raw.lower() else parsed


def _clean(value: Any) -> Any:
    """Drop NUL characters and replace lone surrogates in every string of a JSON value."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def parse_event(raw: Any, received_at: float) -> Event | str:
    """Validate one raw event dict; return the Event or a reason for skipping it."""
    if not isinstance(raw, Mapping):
        return f"event is not an object but {type(raw).__name__}"
    event_type = raw.get("type")
    if not isinstance(event_type, str) or not event_type:
        return "event has no type"
    uuid = raw.get("uuid")
    if event_type.startswith("task-"):
        if not isinstance(uuid, str) or not uuid.strip():
            return f"{event_type[:60]} event has no uuid"
        if len(uuid) > MAX_ID_CHARS:
            return f"{event_type[:60]} event has an oversized uuid"
    else:
        uuid = None
    return Event(
        type=event_type[:MAX_ID_CHARS],
        uuid=uuid,
        timestamp=_timestamp(raw.get("timestamp"), received_at),
        hostname=_short_str(raw.get("hostname")),
        received_at=received_at,
        key=event_key(raw),
        fields=raw,
    )


def _timestamp(value: Any, fallback: float) -> float:
    """The sender's epoch timestamp, or the receive time when it is missing or garbage."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return fallback
    ts = float(value)
    if not math.isfinite(ts) or not MIN_TIMESTAMP < ts < MAX_TIMESTAMP:
        return fallback
    return ts


def _short_str(value: Any) -> str | None:
    """A string field capped at the identifier size, or None when it is not a string."""
    return value[:MAX_ID_CHARS] if isinstance(value, str) and value else None


def event_key(raw: Mapping[str, Any]) -> str:
    """Content hash of an event: a redelivered or duplicated event has the same key."""
    # Raw wire events never carry receiver fields; copy only when one is present.
    identity = (
        {k: v for k, v in raw.items() if k not in RECEIVER_FIELDS}
        if not RECEIVER_FIELDS.isdisjoint(raw)
        else raw
    )
    try:
        blob = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        blob = json.dumps(identity, sort_keys=True, default=repr).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


# Marks an Envelope whose body is kombu's Redis message envelope, not yet unwrapped.
KOMBU_REDIS_ENVELOPE = "application/x-kombu-redis-envelope"


def unwrap_kombu_redis(raw: bytes | str) -> tuple[bytes | str, str | None]:
    """The body and content type inside kombu's Redis envelope, as kombu decodes them."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"kombu envelope is not JSON: {str(exc)[:120]}") from None
    if not isinstance(envelope, dict) or "body" not in envelope:
        raise ValueError("kombu envelope has no body")
    body = envelope["body"]
    properties = envelope.get("properties")
    encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
    if encoding == "base64":
        try:
            body = base64.b64decode(body, validate=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"kombu envelope body is not base64: {exc}") from None
    elif not isinstance(body, str | bytes):
        raise ValueError("kombu envelope body is not text")
    content_type = envelope.get("content-type")
    return body, content_type if isinstance(content_type, str) else None
