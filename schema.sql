-- job-tracker schema, version 1.
-- The single source of the schema. Safe to apply any number of times
-- (`job-tracker init-db`); `job-tracker schema` prints it.
-- Columns of `jobs` and `job_events` are a public contract (see README.md).
-- Columns prefixed `merge_` are internal bookkeeping for the order-insensitive merge.

CREATE TABLE IF NOT EXISTS job_tracker_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id                 text PRIMARY KEY,
    task_name          text,
    status             text NOT NULL DEFAULT 'PENDING' CHECK (status IN (
                           'PENDING', 'WAITING_FOR_REMOTE_WORKER', 'PROCESSING',
                           'FINISHED', 'FAILED', 'CANCELLED')),
    priority           text NOT NULL DEFAULT 'NORMAL'
                           CHECK (priority IN ('LOW', 'NORMAL', 'HIGH', 'URGENT')),
    percentage         smallint NOT NULL DEFAULT 0 CHECK (percentage BETWEEN 0 AND 100),
    summary            text,
    document_id        text,
    document_name      text,
    document_type      text,
    user_id            text,
    queue              text,
    worker             text,
    retries            integer NOT NULL DEFAULT 0,
    args               text,
    kwargs             text,
    result             text,
    error_details      text,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    estimated_duration integer,
    parent_id          text,
    root_id            text,
    start_date         timestamptz NOT NULL,
    started_at         timestamptz,
    end_date           timestamptz,
    duration_seconds   double precision
                           GENERATED ALWAYS AS (EXTRACT(EPOCH FROM end_date - start_date)) STORED,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Internal: sortable keys of the event that last set each last-writer-wins field,
    -- and the per-key stamps behind `metadata`. They make the merge order-insensitive.
    merge_status_key     text COLLATE "C",
    merge_percentage_key text COLLATE "C",
    merge_summary_key    text COLLATE "C",
    merge_worker_key     text COLLATE "C",
    merge_metadata       jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX IF NOT EXISTS jobs_user_start_idx ON jobs (user_id, start_date DESC);
CREATE INDEX IF NOT EXISTS jobs_start_idx ON jobs (start_date DESC);
CREATE INDEX IF NOT EXISTS jobs_active_idx ON jobs (status, start_date DESC)
    WHERE status IN ('PENDING', 'WAITING_FOR_REMOTE_WORKER', 'PROCESSING');
CREATE INDEX IF NOT EXISTS jobs_status_idx ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_document_type_idx ON jobs (document_type, start_date DESC);
CREATE INDEX IF NOT EXISTS jobs_end_date_idx ON jobs (end_date) WHERE end_date IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_root_idx ON jobs (root_id) WHERE root_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_task_name_idx ON jobs (task_name, start_date DESC);
-- `jobs --status S` within dates, and the FAILED jobs of a statistics window.
CREATE INDEX IF NOT EXISTS jobs_status_start_idx ON jobs (status, start_date DESC);
-- Statistics read a window of start_date from this index alone (index-only scan),
-- never the table: every column they aggregate is included.
CREATE INDEX IF NOT EXISTS jobs_window_idx ON jobs (start_date)
    INCLUDE (status, document_type, task_name, duration_seconds, started_at);

CREATE TABLE IF NOT EXISTS job_events (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_key   text COLLATE "C" NOT NULL,
    event_type  text NOT NULL,
    status      text,
    percentage  smallint CHECK (percentage BETWEEN 0 AND 100),
    message     text,
    hostname    text,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (job_id, event_key)
);

CREATE INDEX IF NOT EXISTS job_events_job_time_idx ON job_events (job_id, occurred_at, id);

-- Events that could not be applied even alone (a poison event): kept, never dropped.
CREATE TABLE IF NOT EXISTS job_tracker_dead_events (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    error       text NOT NULL,
    event       jsonb NOT NULL
);

-- One row per running `job-tracker listen`, refreshed periodically (liveness).
CREATE TABLE IF NOT EXISTS job_tracker_instances (
    instance        text PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    started_at      timestamptz NOT NULL,
    heartbeat_at    timestamptz NOT NULL,
    last_event_at   timestamptz,
    events_applied  bigint NOT NULL DEFAULT 0,
    errors          bigint NOT NULL DEFAULT 0,
    gaps            bigint NOT NULL DEFAULT 0,
    spool_events    bigint NOT NULL DEFAULT 0
);

-- True when key `a` is newer than key `b` (NULL is older than everything).
CREATE OR REPLACE FUNCTION jt_newer(a text, b text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT a IS NOT NULL AND (b IS NULL OR a COLLATE "C" > b COLLATE "C")
$$;

-- Per-key last-writer-wins merge of {key: [stamp, value]} objects.
CREATE OR REPLACE FUNCTION jt_lww_merge(cur jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(jsonb_object_agg(k, v), '{}'::jsonb)
    FROM (
        SELECT DISTINCT ON (k) k, v
        FROM (
            SELECT key AS k, value AS v FROM jsonb_each(COALESCE(cur, '{}'::jsonb))
            UNION ALL
            SELECT key, value FROM jsonb_each(COALESCE(new, '{}'::jsonb))
        ) AS both_sides
        ORDER BY k, (v ->> 0) COLLATE "C" DESC
    ) AS winners
$$;

-- The plain {key: value} view of a {key: [stamp, value]} object.
CREATE OR REPLACE FUNCTION jt_lww_values(stamped jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(jsonb_object_agg(key, value -> 1), '{}'::jsonb)
    FROM jsonb_each(COALESCE(stamped, '{}'::jsonb))
$$;

INSERT INTO job_tracker_meta (key, value) VALUES ('schema_version', '1')
ON CONFLICT (key) DO NOTHING;
