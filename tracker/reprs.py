"""Safe reading of Celery's args/kwargs reprs and of document fields (pure, no I/O)."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tracker.status import JobPriority

# literal_eval on a huge string can take very long; Celery truncates near 1 KiB anyway.
MAX_REPR_CHARS = 64 * 1024
ID_FIELDS = ("document_id", "document_name", "document_type", "user_id")
DOCUMENT_FIELDS = (*ID_FIELDS, "priority", "estimated_duration", "metadata")


@dataclass(slots=True)
class DocumentFields:
    """Document fields of a job, from kwargs or from a task-progress event."""

    document_id: str | None = None
    document_name: str | None = None
    document_type: str | None = None
    user_id: str | None = None
    priority: JobPriority | None = None
    estimated_duration: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def literal_kwargs(kwargs: Any) -> Mapping[str, Any] | None:
    """The kwargs as a dict: parsed from Celery's repr with literal_eval only, else None."""
    if isinstance(kwargs, Mapping):
        return kwargs
    if not isinstance(kwargs, str) or not kwargs or len(kwargs) > MAX_REPR_CHARS:
        return None
    return _parse_kwargs(kwargs)


@lru_cache(maxsize=4096)
def _parse_kwargs(kwargs: str) -> Mapping[str, Any] | None:
    """literal_eval of a kwargs repr (cached: sent and received carry the same one)."""
    # Parsing is the costliest step of the mapping: skip reprs naming none of our fields.
    if not any(name in kwargs for name in DOCUMENT_FIELDS):
        return None
    try:
        value = ast.literal_eval(kwargs)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        # Truncated ('...'), masked (kwargsrepr) or non-literal reprs keep only the raw text.
        return None
    return value if isinstance(value, dict) else None


def document_fields(source: Mapping[str, Any] | None) -> DocumentFields:
    """Pick the document fields out of a kwargs dict or an event, ignoring bad values."""
    found = DocumentFields()
    if not source:
        return found
    for name in ID_FIELDS:
        setattr(found, name, _id_text(source.get(name)))
    found.priority = _priority(source.get("priority"))
    found.estimated_duration = _whole_seconds(source.get("estimated_duration"))
    meta = source.get("metadata")
    if isinstance(meta, Mapping):
        found.metadata = {str(k): v for k, v in meta.items()}
    return found


def _id_text(value: Any) -> str | None:
    """An identifier as text (ints are common for ids), capped; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        text = str(value)
        return text[:255] if text else None
    return None


def _priority(value: Any) -> JobPriority | None:
    """A priority name in any case, or None when it is not one of ours."""
    if not isinstance(value, str):
        return None
    try:
        return JobPriority(value.strip().upper())
    except ValueError:
        return None


def _whole_seconds(value: Any) -> int | None:
    """A non-negative duration in whole seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value < 0 or value > 2**31 - 1:  # NaN, negative or overflowing
        return None
    return int(value)
