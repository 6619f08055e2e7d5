"""Job statuses and priorities: the vocabulary of the public schema."""

from enum import StrEnum


class JobStatus(StrEnum):
    """Status of a job row (the seed's statuses)."""

    PENDING = "PENDING"
    WAITING_FOR_REMOTE_WORKER = "WAITING_FOR_REMOTE_WORKER"
    PROCESSING = "PROCESSING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class JobPriority(StrEnum):
    """Priority of a job, taken from the task's kwargs."""

    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"
    URGENT = "URGENT"


# Between terminal states FINISHED beats FAILED beats CANCELLED (Celery's precedence);
# any terminal state beats every non-terminal one, whatever the timestamps say.
TERMINAL_RANK: dict[JobStatus, int] = {
    JobStatus.CANCELLED: 1,
    JobStatus.FAILED: 2,
    JobStatus.FINISHED: 3,
}

TERMINAL = frozenset(TERMINAL_RANK)
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.WAITING_FOR_REMOTE_WORKER, JobStatus.PROCESSING})


def terminal_rank(status: JobStatus | None) -> int:
    """Rank of a status for the sticky-terminal rule (0 for non-terminal)."""
    return TERMINAL_RANK.get(status, 0) if status is not None else 0
