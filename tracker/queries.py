"""Every SQL statement of the job service (read side and control), as named constants.

All values are bound parameters. An optional filter is written as
`(CAST(:x AS type) IS NULL OR column = :x)`: psycopg2 binds on the client, so
PostgreSQL plans the literal and drops the branch that does not apply.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from tracker.status import JobStatus

# The public columns of `jobs` (the merge_* bookkeeping is internal).
JOB_COLUMNS = """
    id, task_name, status, priority, percentage, summary, document_id, document_name,
    document_type, user_id, queue, worker, retries, args, kwargs, result, error_details,
    metadata, estimated_duration, parent_id, root_id, start_date, started_at, end_date,
    duration_seconds, created_at, updated_at
"""
ACTIVE_STATUSES = "('PENDING', 'WAITING_FOR_REMOTE_WORKER', 'PROCESSING')"
TERMINAL_STATUSES = "('FINISHED', 'FAILED', 'CANCELLED')"
USER_MATCHES = "(CAST(:user_id AS text) IS NULL OR user_id = :user_id)"
# What a job is grouped by in statistics: its document type, else its task name.
JOB_KIND = "COALESCE(NULLIF(document_type, ''), task_name, 'unknown')"

GET_JOB: TextClause = text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :job_id AND {USER_MATCHES}")

SEARCH_FILTER = f"""
    (CAST(:status AS text) IS NULL OR status = :status)
    AND (CAST(:document_type AS text) IS NULL OR document_type = :document_type)
    AND (CAST(:priority AS text) IS NULL OR priority = :priority)
    AND (CAST(:task_name AS text) IS NULL OR task_name = :task_name)
    AND (CAST(:date_from AS timestamptz) IS NULL OR start_date >= :date_from)
    AND (CAST(:date_to AS timestamptz) IS NULL OR start_date <= :date_to)
    AND {USER_MATCHES}
"""

# One round trip for the page and the total; `id` breaks ties so pages never overlap.
# The total counts at most :count_limit matches (NULL: all of them). Counting every match
# of an unselective filter reads every matching row (3 s over 1 000 000 jobs); the capped
# count stops after :count_limit index entries, and the service reports "more than N".
CAPPED_COUNT = f"""
    SELECT count(*) FROM (
        SELECT 1 FROM jobs WHERE {SEARCH_FILTER} LIMIT CAST(:count_limit AS bigint)
    ) AS capped
"""

SEARCH_JOBS: TextClause = text(f"""
    SELECT {JOB_COLUMNS}, ({CAPPED_COUNT}) AS total
    FROM jobs WHERE {SEARCH_FILTER}
    ORDER BY start_date DESC, id DESC
    LIMIT :limit OFFSET :offset
""")

# Needed only when the page is empty (an offset past the end still reports the total).
COUNT_JOBS: TextClause = text(CAPPED_COUNT)

ACTIVE_JOBS: TextClause = text(f"""
    SELECT {JOB_COLUMNS} FROM jobs
    WHERE status IN {ACTIVE_STATUSES} AND {USER_MATCHES}
    ORDER BY start_date DESC, id DESC
""")

# The job row decides "not found" (no row) versus "no history yet" (one row of NULLs).
JOB_HISTORY: TextClause = text("""
    SELECT e.id, j.id AS job_id, e.event_key, e.event_type, e.status, e.percentage, e.message,
           e.hostname, e.occurred_at, e.received_at, e.details
    FROM jobs AS j LEFT JOIN job_events AS e ON e.job_id = j.id
    WHERE j.id = :job_id AND (CAST(:user_id AS text) IS NULL OR j.user_id = :user_id)
    ORDER BY e.occurred_at, e.id
""")

# ---------------------------------------------------------------- statistics

STATS_WINDOW = f"start_date >= :since AND {USER_MATCHES}"

# Statistics run on two connections in one snapshot (REPEATABLE READ): the first exports
# it, the second imports it before its first query.
EXPORT_SNAPSHOT: TextClause = text("SELECT pg_export_snapshot()")
IMPORT_SNAPSHOT: TextClause = text("SET TRANSACTION SNAPSHOT :snapshot")

# Statistics read the window from jobs_window_idx alone (an index-only scan, no table
# pages), and a sort may use this much memory instead of temporary files. JIT costs more
# than it saves on these sub-second queries.
STATS_SETTINGS: tuple[TextClause, ...] = (
    text("SET LOCAL work_mem = '64MB'"),
    text("SET LOCAL jit = off"),
)

# One count column per status, named after it.
STATUS_COUNTS = ", ".join(f"count(*) FILTER (WHERE status = '{s}') AS \"{s}\"" for s in JobStatus)

# Totals, counts per status and the queue-wait percentiles in one pass over the window.
STATS_TOTALS: TextClause = text(f"""
    SELECT
        count(*) AS total_jobs,
        count(*) FILTER (WHERE status IN {ACTIVE_STATUSES}) AS active_jobs,
        COALESCE(avg(duration_seconds), 0) AS average_duration_seconds,
        COALESCE(round(sum(duration_seconds)), 0)::bigint AS total_processing_time,
        COALESCE(count(*) FILTER (WHERE status = 'FINISHED')::float8
                 / NULLIF(count(*) FILTER (WHERE status IN {TERMINAL_STATUSES}), 0), 0)
            AS success_rate,
        {STATUS_COUNTS},
        count(started_at) AS wait_count,
        percentile_cont(0.5) WITHIN GROUP (
            ORDER BY date_part('epoch', started_at - start_date)) AS wait_p50,
        percentile_cont(0.95) WITHIN GROUP (
            ORDER BY date_part('epoch', started_at - start_date)) AS wait_p95
    FROM jobs WHERE {STATS_WINDOW}
""")

STATS_BY_KIND: TextClause = text(f"""
    SELECT {JOB_KIND} AS kind, count(*) AS jobs,
           count(*) FILTER (WHERE status = 'FINISHED') AS finished,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds)
               FILTER (WHERE status = 'FINISHED') AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds)
               FILTER (WHERE status = 'FINISHED') AS p95
    FROM jobs WHERE {STATS_WINDOW}
    GROUP BY kind ORDER BY jobs DESC, kind
""")

# Celery reports `repr(exc)` first in error_details: group by the exception's class name.
STATS_TOP_FAILURES: TextClause = text(f"""
    SELECT COALESCE(substring(error_details FROM '^[A-Za-z_][A-Za-z0-9_.]*'), 'unknown')
               AS exception,
           count(*) AS count,
           (array_agg(left(split_part(error_details, E'\\n', 1), 200)
                      ORDER BY end_date DESC NULLS LAST))[1] AS example
    FROM jobs WHERE {STATS_WINDOW} AND status = 'FAILED'
    GROUP BY 1 ORDER BY count DESC, exception
    LIMIT :top
""")

# Every hour of the window, empty ones included, so a chart needs no gap filling. One
# index range count per hour (hours start at the window's first hour boundary, as
# date_trunc('hour') would put them) is cheaper than grouping the window's rows.
STATS_PER_HOUR: TextClause = text(f"""
    SELECT h.hour, (
        SELECT count(*) FROM jobs
        WHERE start_date >= h.hour AND start_date < h.hour + interval '1 hour'
          AND {STATS_WINDOW}
    ) AS jobs
    FROM generate_series(date_trunc('hour', CAST(:since AS timestamptz)),
                         date_trunc('hour', CAST(:until AS timestamptz)),
                         interval '1 hour') AS h(hour)
    ORDER BY h.hour
""")

# ---------------------------------------------------------------- cancel

# Held for the short marking transaction only (never while talking to the broker).
LOCK_JOB: TextClause = text(
    f"SELECT status FROM jobs WHERE id = :job_id AND {USER_MATCHES} FOR UPDATE"
)

# The same register rules as store.APPLY_BATCH: the cancel's order key (rank of
# CANCELLED) must be newer than the stored one, so a FINISHED or FAILED event still wins
# and the later task-revoked only confirms. Notifies like the listener does.
CANCEL_JOB: TextClause = text(f"""
    WITH cancelled AS (
        UPDATE jobs AS j SET
            status = 'CANCELLED',
            end_date = to_timestamp(:ts),
            merge_status_key = :key,
            summary = CASE WHEN jt_newer(:key, j.merge_summary_key) THEN :summary
                           ELSE j.summary END,
            merge_summary_key = GREATEST(j.merge_summary_key, :key),
            updated_at = now()
        WHERE j.id = :job_id AND j.status IN {ACTIVE_STATUSES}
          AND jt_newer(:key, j.merge_status_key)
        RETURNING j.id, j.status, j.percentage, j.summary, j.user_id, j.task_name
    )
    SELECT count(pg_notify('job_updates', json_build_object(
        'id', id, 'status', status, 'percentage', percentage, 'summary', left(summary, 200),
        'user_id', user_id, 'task_name', task_name)::text)) AS notified
    FROM cancelled
""")

INSERT_CANCEL_EVENT: TextClause = text("""
    INSERT INTO job_events (job_id, event_key, event_type, status, percentage, message,
                            hostname, occurred_at, received_at, details)
    VALUES (:job_id, :event_key, 'cancel-requested', 'CANCELLED', NULL, :summary,
            :hostname, to_timestamp(:ts), now(), CAST(:details AS jsonb))
    ON CONFLICT (job_id, event_key) DO NOTHING
""")

# ---------------------------------------------------------------- cleanup

CLEANUP_FILTER = "status = ANY(CAST(:statuses AS text[])) AND end_date < :cutoff"

COUNT_OLD_JOBS: TextClause = text(f"SELECT count(*) FROM jobs WHERE {CLEANUP_FILTER}")

# One bounded batch per transaction; SKIP LOCKED never waits on rows the listener is
# writing, so neither side blocks the other for long. History goes by ON DELETE CASCADE.
DELETE_OLD_JOBS: TextClause = text(f"""
    WITH doomed AS (
        SELECT id FROM jobs WHERE {CLEANUP_FILTER}
        ORDER BY end_date LIMIT :batch_size
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM jobs AS j USING doomed WHERE j.id = doomed.id
""")

# ---------------------------------------------------------------- watch

# Run on a dedicated autocommit psycopg2 connection (not a pooled one): LISTEN is
# session state, and notifications are read from the raw socket with select().
LISTEN_JOB_UPDATES = "LISTEN job_updates"
