"""JobService: search, inspect, watch, cancel and clean up tracked jobs.

Usable from a web app or a script. Every input is validated by a model of
`tracker.models`; all SQL lives in `tracker.queries`. Database errors are
translated here into `store.StoreError` (one line, password masked); problems
the caller can act on raise `ServiceError` subclasses.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg2
import psycopg2.extensions
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import URL, Engine

from tracker import queries, store
from tracker.changes import order_key
from tracker.log import get_logger
from tracker.models import (
    CancelRequest,
    CleanupRequest,
    DurationStats,
    FailureCount,
    HourlyCount,
    InvalidRequest,
    JobEventResponse,
    JobNotCancellable,
    JobNotFound,
    JobPage,
    JobProgressUpdate,
    JobRef,
    JobResponse,
    JobSearchRequest,
    JobStatistics,
    RevokeFailed,
    ServiceError,
    StatisticsRequest,
    UserScope,
    WatchRequest,
    WatchTimeout,
)
from tracker.status import TERMINAL, JobStatus, terminal_rank

__all__ = [
    "InvalidRequest",
    "JobNotCancellable",
    "JobNotFound",
    "JobService",
    "RevokeFailed",
    "ServiceError",
    "WatchTimeout",
]

log = get_logger("service")

# A cancel orders like Celery's task-revoked (mapping.RULES), so the merge treats both alike.
CANCEL_PRECEDENCE = 7
TOP_FAILURES = 5
STATS_QUERIES = {
    "totals": queries.STATS_TOTALS,
    "by_kind": queries.STATS_BY_KIND,
    "failures": queries.STATS_TOP_FAILURES,
    "hours": queries.STATS_PER_HOUR,
}
# Groups of statistics queries run at once on connections of their own, in one snapshot;
# each group takes about as long as the others over a large window.
STATS_GROUPS = (("by_kind",), ("totals", "hours"), ("failures",))
Row = sa.RowMapping


class JobService:
    """Query and control jobs tracked in PostgreSQL (and revoke them through Celery)."""

    def __init__(self, database: str | URL | Engine, celery_app: Any = None) -> None:
        self._owns_engine = not isinstance(database, Engine)
        # Statistics use one connection per group of queries at once (STATS_GROUPS).
        self.engine = (
            database
            if isinstance(database, Engine)
            else store.create_engine(database, pool_size=len(STATS_GROUPS))
        )
        self.celery_app = celery_app

    def close(self) -> None:
        """Release the connection pool when this service created it."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> JobService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ database access

    def _error(self, exc: Exception) -> store.StoreError:
        """A one-line store error naming the database (password masked)."""
        translated = (
            store.translate(exc)
            if isinstance(exc, sa.exc.SQLAlchemyError)
            else store.TransientStoreError(store.describe_error(exc))
        )
        return type(translated)(f"database {store.safe_url(self.engine.url)}: {translated}")

    @contextmanager
    def _connect(self, **options: Any) -> Iterator[sa.Connection]:
        """A connection whose driver errors surface as StoreError."""
        try:
            with self.engine.connect() as conn:
                yield conn.execution_options(**options) if options else conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """A committed-on-success transaction whose driver errors surface as StoreError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(exc) from exc

    def _fetch(self, query: sa.TextClause, **params: Any) -> Sequence[Row]:
        """All rows of one read query."""
        with self._connect() as conn:
            return conn.execute(query, params).mappings().all()

    # ------------------------------------------------------------ reads

    def get_job(self, job_id: str, user_id: str | None = None) -> JobResponse:
        """The job; with a user id, another user's job is not found."""
        ref = JobRef.build(job_id=job_id, user_id=user_id)
        rows = self._fetch(queries.GET_JOB, job_id=ref.job_id, user_id=ref.user_id)
        if not rows:
            raise JobNotFound(f"job {ref.job_id!r} not found")
        return JobResponse.model_validate(dict(rows[0]))

    def search_jobs(self, request: JobSearchRequest | None = None) -> tuple[list[JobResponse], int]:
        """A page of matching jobs, newest first, and the number of matches.

        The number is exact up to `request.total_cap` (10 000 by default, or the end of the
        page); when more jobs match it is that cap: `search_page` also says whether it is.
        """
        page = self.search_page(request)
        return page.items, page.total

    def search_page(self, request: JobSearchRequest | None = None) -> JobPage:
        """A page of matching jobs, newest first, the total and whether it is capped."""
        request = request or JobSearchRequest()
        cap = request.total_cap
        params = request.model_dump(exclude={"count_limit"})
        params["count_limit"] = None if cap is None else cap + 1  # one more tells "more"
        with self._connect() as conn:
            rows = conn.execute(queries.SEARCH_JOBS, params).mappings().all()
            counted = int(rows[0]["total"]) if rows else 0
            if not rows and request.offset:  # past the end: the page cannot tell the total
                counted = int(conn.execute(queries.COUNT_JOBS, params).scalar_one())
        items = [JobResponse.model_validate(dict(r)) for r in rows]
        if cap is not None and counted > cap:
            return JobPage(total=cap, total_is_capped=True, items=items)
        return JobPage(total=counted, items=items)

    def get_active_jobs(self, user_id: str | None = None) -> list[JobResponse]:
        """PENDING, WAITING_FOR_REMOTE_WORKER and PROCESSING jobs, newest first."""
        scope = UserScope.build(user_id=user_id)
        rows = self._fetch(queries.ACTIVE_JOBS, user_id=scope.user_id)
        return [JobResponse.model_validate(dict(r)) for r in rows]

    def get_history(self, job_id: str, user_id: str | None = None) -> list[JobEventResponse]:
        """The job's history rows in time order."""
        ref = JobRef.build(job_id=job_id, user_id=user_id)
        rows = self._fetch(queries.JOB_HISTORY, job_id=ref.job_id, user_id=ref.user_id)
        if not rows:
            raise JobNotFound(f"job {ref.job_id!r} not found")
        return [JobEventResponse.model_validate(dict(r)) for r in rows if r["id"] is not None]

    # ------------------------------------------------------------ statistics

    def get_job_statistics(self, user_id: str | None = None, days: int = 30) -> JobStatistics:
        """Statistics of the jobs started in the last `days` days, computed in SQL."""
        request = StatisticsRequest.build(user_id=user_id, days=days)
        until = datetime.now(UTC)
        since = until - timedelta(days=request.days)
        params = {"user_id": request.user_id, "since": since, "until": until, "top": TOP_FAILURES}
        # One snapshot for all parts, so the numbers add up even while the listener writes:
        # the other connections import the first one's snapshot, and the parts run at the
        # same time (each is CPU-bound in its own PostgreSQL backend).
        first, *others = STATS_GROUPS
        with self._connect(isolation_level="REPEATABLE READ", postgresql_readonly=True) as conn:
            snapshot = conn.execute(queries.EXPORT_SNAPSHOT).scalar_one()
            with ThreadPoolExecutor(max_workers=len(others)) as pool:
                futures = [
                    pool.submit(self._statistics_parts, names, params, snapshot) for names in others
                ]
                parts = self._statistics_parts(first, params, conn=conn)
                for future in futures:
                    parts.update(future.result())
        return _statistics(request, since, parts)

    def _statistics_parts(
        self,
        names: Sequence[str],
        params: dict[str, Any],
        snapshot: str | None = None,
        conn: sa.Connection | None = None,
    ) -> dict[str, Sequence[Row]]:
        """Rows of some statistics queries, on `conn` or in `snapshot` on a connection of
        their own."""
        if conn is None:
            with self._connect(isolation_level="REPEATABLE READ", postgresql_readonly=True) as own:
                own.execute(queries.IMPORT_SNAPSHOT, {"snapshot": snapshot})
                return self._statistics_parts(names, params, conn=own)
        for setting in queries.STATS_SETTINGS:
            conn.execute(setting)
        return {name: conn.execute(STATS_QUERIES[name], params).mappings().all() for name in names}

    # ------------------------------------------------------------ cancel

    def cancel_job(
        self, job_id: str, user_id: str | None = None, terminate: bool = False
    ) -> JobResponse:
        """Revoke a non-terminal job through Celery and mark it CANCELLED at once."""
        request = CancelRequest.build(job_id=job_id, user_id=user_id, terminate=terminate)
        app = self._celery_app()
        job = self.get_job(request.job_id, request.user_id)
        if job.terminal:
            raise JobNotCancellable(
                f"job {job.id!r} is already {job.status.value} ({job.summary or 'no summary'}); "
                "only PENDING, WAITING_FOR_REMOTE_WORKER or PROCESSING jobs can be cancelled"
            )
        # Stamped before the revoke is sent, so the worker's task-revoked (later) confirms it.
        stamp = time.time()
        self._revoke(app, job.id, request.terminate)
        self._mark_cancelled(request, stamp)
        log.info("job_cancelled", job_id=job.id, user_id=request.user_id,
                 terminate=request.terminate)  # fmt: skip
        return self.get_job(job.id)

    def _celery_app(self) -> Any:
        """The Celery app revokes go through."""
        if self.celery_app is None:
            raise ServiceError("cancelling needs a Celery app: JobService(..., celery_app=app)")
        return self.celery_app

    def _revoke(self, app: Any, job_id: str, terminate: bool) -> None:
        """Send Celery's revoke; any broker error leaves the job untouched."""
        try:
            app.control.revoke(job_id, terminate=terminate, signal="SIGTERM")
        except Exception as exc:  # kombu and redis raise many unrelated types
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise RevokeFailed(f"cannot send revoke for job {job_id!r}: {reason}") from exc

    def _mark_cancelled(self, request: CancelRequest, stamp: float) -> None:
        """Set CANCELLED like a merged task-revoked would, and record the request."""
        event_key = f"cancel-requested-{uuid.uuid4().hex}"
        rank = terminal_rank(JobStatus.CANCELLED)
        requester = request.user_id or "operator"
        params = {
            "job_id": request.job_id, "user_id": request.user_id, "ts": stamp,
            "key": order_key(rank, stamp, CANCEL_PRECEDENCE, event_key),
            "event_key": event_key, "summary": f"Cancelled by {requester}",
            "hostname": socket.gethostname()[:255],
        }  # fmt: skip
        with self._transaction() as conn:
            row = conn.execute(queries.LOCK_JOB, params).first()
            if row is None:
                raise JobNotFound(f"job {request.job_id!r} not found")
            self._refuse_if_ended(request.job_id, JobStatus(row.status))
            conn.execute(queries.CANCEL_JOB, params)
            details = {"requested_by": requester, "terminate": request.terminate,
                       "previous_status": row.status}  # fmt: skip
            conn.execute(queries.INSERT_CANCEL_EVENT, {**params, "details": _json(details)})

    @staticmethod
    def _refuse_if_ended(job_id: str, status: JobStatus) -> None:
        """A job that finished or failed while the revoke was sent keeps its outcome."""
        # CANCELLED here means the worker's task-revoked was stored first: that is a success.
        if status in TERMINAL and status != JobStatus.CANCELLED:
            raise JobNotCancellable(
                f"job {job_id!r} became {status.value} before it could be cancelled"
            )

    # ------------------------------------------------------------ cleanup

    def cleanup_old_jobs(
        self, days: int = 90, statuses: Iterable[str] = TERMINAL, batch_size: int = 1000
    ) -> int:
        """Delete terminal jobs that ended more than `days` days ago, in bounded batches."""
        request = CleanupRequest.build(days=days, statuses=frozenset(statuses),
                                       batch_size=batch_size)  # fmt: skip
        params = _cleanup_params(request)
        deleted = 0
        while True:
            with self._transaction() as conn:
                count = conn.execute(queries.DELETE_OLD_JOBS, params).rowcount
            deleted += count
            # A short batch means nothing is left (rows locked right now wait for next time).
            if count < request.batch_size:
                break
        log.info("jobs_cleaned_up", deleted=deleted, days=request.days,
                 statuses=params["statuses"])  # fmt: skip
        return deleted

    def count_old_jobs(self, days: int = 90, statuses: Iterable[str] = TERMINAL) -> int:
        """How many jobs cleanup_old_jobs would delete now."""
        request = CleanupRequest.build(days=days, statuses=frozenset(statuses))
        with self._connect() as conn:
            count = conn.execute(queries.COUNT_OLD_JOBS, _cleanup_params(request)).scalar_one()
        return int(count)

    # ------------------------------------------------------------ watch

    def watch_job(
        self, job_id: str, user_id: str | None = None, timeout: float | None = None
    ) -> Iterator[JobProgressUpdate]:
        """Yield the job's state, then every notified change, until it is terminal."""
        request = WatchRequest.build(job_id=job_id, user_id=user_id, timeout=timeout)
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        with closing(self._listen()) as conn:
            # Read after LISTEN: a change committed in between is notified, none is missed.
            current = JobProgressUpdate.from_job(self.get_job(request.job_id, request.user_id))
            yield current
            while not current.terminal:
                wait = _remaining(deadline, request, current)
                for current in self._notifications(conn, request.job_id, wait):
                    yield current
                    if current.terminal:
                        return

    def _listen(self) -> psycopg2.extensions.connection:
        """A dedicated autocommit connection listening on job_updates."""
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        try:
            conn: psycopg2.extensions.connection = psycopg2.connect(*cargs, **cparams)
        except psycopg2.Error as exc:
            raise self._error(exc) from exc
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(queries.LISTEN_JOB_UPDATES)
        except psycopg2.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        return conn

    def _notifications(
        self, conn: psycopg2.extensions.connection, job_id: str, wait: float | None
    ) -> list[JobProgressUpdate]:
        """Updates of `job_id` notified within `wait` seconds (None: wait for one)."""
        try:
            ready, _, _ = select.select([conn], [], [], wait)
            if not ready:
                return []
            conn.poll()
        except psycopg2.Error as exc:
            raise self._error(exc) from exc
        payloads = [n.payload for n in conn.notifies]
        conn.notifies.clear()
        received = datetime.now(UTC)
        updates = (_parse_notification(p, received) for p in payloads)
        return [u for u in updates if u is not None and u.job_id == job_id]


# ---------------------------------------------------------------- helpers


def _json(value: Any) -> str:
    """JSON text for a jsonb parameter."""
    return orjson.dumps(value).decode()


def _cleanup_params(request: CleanupRequest) -> dict[str, Any]:
    """Bound parameters of the cleanup statements."""
    return {
        "statuses": sorted(s.value for s in request.statuses),
        "cutoff": datetime.now(UTC) - timedelta(days=request.days),
        "batch_size": request.batch_size,
    }


def _remaining(
    deadline: float | None, request: WatchRequest, current: JobProgressUpdate
) -> float | None:
    """Seconds left to wait, or WatchTimeout when none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise WatchTimeout(f"job {request.job_id!r} is still {current.status.value} "
                           f"after {request.timeout:g} s")  # fmt: skip
    return left


def _parse_notification(payload: str, received: datetime) -> JobProgressUpdate | None:
    """The update in a job_updates payload; None for a payload of another shape."""
    try:
        return JobProgressUpdate.from_notification(orjson.loads(payload), received)
    except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError):
        log.debug("notification_skipped", payload=payload[:200])
        return None


def _durations(count: int, p50: float | None, p95: float | None) -> DurationStats:
    """Count and percentiles of one duration."""
    return DurationStats(count=count, p50_seconds=p50, p95_seconds=p95)


def _statistics(
    request: StatisticsRequest, since: datetime, parts: dict[str, Sequence[Row]]
) -> JobStatistics:
    """The statistics model from the rows of the statistics queries."""
    totals = parts["totals"][0]
    by_status = {s.value: int(totals[s.value]) for s in JobStatus}
    kinds = parts["by_kind"]
    return JobStatistics(
        total_jobs=totals["total_jobs"],
        jobs_by_status=by_status,
        jobs_by_type={r["kind"]: int(r["jobs"]) for r in kinds},
        average_duration_seconds=float(totals["average_duration_seconds"]),
        success_rate=float(totals["success_rate"]),
        total_processing_time=int(totals["total_processing_time"]),
        active_jobs=totals["active_jobs"],
        window_days=request.days,
        since=since,
        duration_by_type={
            r["kind"]: _durations(r["finished"], r["p50"], r["p95"]) for r in kinds if r["finished"]
        },
        queue_wait=_durations(totals["wait_count"], totals["wait_p50"], totals["wait_p95"]),
        top_failures=[FailureCount.model_validate(dict(r)) for r in parts["failures"]],
        jobs_per_hour=[HourlyCount.model_validate(dict(r)) for r in parts["hours"]],
    )
