"""Query latency at scale: N jobs with their history, then the read commands, timed.

The dataset (default 1 000 000 jobs, 5 history rows each, start dates spread over 90
days, about 1 000 active jobs in the last hour, users skewed so some are heavy) is loaded
with set-based SQL into `jt_bench_q<N>` and kept between runs; it is rebuilt when
schema.sql changes or with `--rebuild`. Secondary indexes are dropped during the load and
re-created by `job-tracker init-db` (the schema's own CREATE INDEX IF NOT EXISTS).

The timed calls are `tracker.service.JobService`'s, the code behind `job-tracker jobs`,
`active`, `show` and `stats`, when it is importable; otherwise equivalent SQL. Run it in
the environment of the tracker under test (bench.run does):

    python -m bench.queries --jobs 1000000 --rounds 100
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench import db

DATASET_VERSION = "1"
ACTIVE_JOBS = 1000
USERS = 2000

DROP_SECONDARY_INDEXES = """
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT indexname FROM pg_indexes AS i
           WHERE schemaname = current_schema() AND tablename IN ('jobs', 'job_events')
             AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
  LOOP EXECUTE 'DROP INDEX ' || quote_ident(r.indexname); END LOOP;
END $$
"""

LOAD_JOBS = """
INSERT INTO jobs (id, task_name, status, priority, percentage, summary, document_id,
                  document_name, document_type, user_id, queue, worker, retries, args, kwargs,
                  result, error_details, start_date, started_at, end_date)
SELECT id, task_name, status, priority,
       CASE status WHEN 'FINISHED' THEN 100 WHEN 'FAILED' THEN 50 WHEN 'CANCELLED' THEN 25
                   ELSE (r * 100)::int END,
       CASE status WHEN 'FINISHED' THEN 'Finished in 3.20 s'
                   WHEN 'FAILED' THEN 'Failed: ValueError(''cannot parse'')'
                   WHEN 'CANCELLED' THEN 'Revoked' ELSE 'extract step 2/4' END,
       'doc-' || g, 'report-' || g || '.pdf', (ARRAY['pdf','docx','html','txt'])[1 + mod(g, 4)],
       user_id, CASE WHEN mod(g, 5) = 0 THEN 'gpu' ELSE 'celery' END, 'celery@bench-w' || mod(g, 4),
       CASE WHEN mod(g, 10) = 0 THEN 1 ELSE 0 END, '()',
       '{''document_id'': ''doc-' || g || ''', ''user_id'': ''' || user_id || '''}',
       CASE WHEN status = 'FINISHED' THEN '{''pages'': 3}' END,
       CASE WHEN status = 'FAILED' THEN 'ValueError(''cannot parse report.pdf'')' ||
            E'\\nTraceback (most recent call last):\\n  File "ingest.py", line 49\\n' ||
            'ValueError: cannot parse report.pdf' END,
       start_date, start_date + wait,
       CASE WHEN status IN ('FINISHED', 'FAILED', 'CANCELLED') THEN start_date + wait + run END
FROM (
    SELECT g, r, md5('bench-job-' || g)::uuid::text AS id,
           (ARRAY['examples.ingest.extract', 'examples.ingest.chunk', 'examples.ingest.embed',
                  'examples.ingest.store', 'examples.ingest.fetch_remote',
                  'examples.ingest.ocr'])[1 + mod(g, 6)] AS task_name,
           CASE WHEN g <= %(active)s
                THEN (ARRAY['PENDING', 'PROCESSING', 'WAITING_FOR_REMOTE_WORKER'])[1 + mod(g, 3)]
                WHEN r < 0.12 THEN 'FAILED' WHEN r < 0.15 THEN 'CANCELLED'
                ELSE 'FINISHED' END AS status,
           (ARRAY['LOW', 'NORMAL', 'NORMAL', 'NORMAL', 'HIGH', 'URGENT'])[1 + mod(g, 6)]
               AS priority,
           'user-' || lpad(floor(power(random(), 2) * %(users)s)::int::text, 4, '0') AS user_id,
           CASE WHEN g <= %(active)s THEN now() - random() * interval '1 hour'
                ELSE now() - random() * interval '90 days' END AS start_date,
           random() * interval '5 seconds' AS wait,
           (0.1 + random() * 60) * interval '1 second' AS run
    FROM (SELECT g, random() AS r FROM generate_series(1, %(jobs)s) AS g) AS s
) AS x
"""

LOAD_HISTORY = """
INSERT INTO job_events (job_id, event_key, event_type, status, percentage, message, hostname,
                        occurred_at, received_at, details)
SELECT j.id, md5(j.id || k),
       (ARRAY['task-sent', 'task-received', 'task-started', 'task-progress',
              CASE j.status WHEN 'FAILED' THEN 'task-failed' WHEN 'CANCELLED' THEN 'task-revoked'
                            ELSE 'task-succeeded' END])[k],
       (ARRAY['PENDING', 'PENDING', 'PROCESSING', 'PROCESSING', j.status])[k],
       (ARRAY[NULL, NULL, NULL, 50, j.percentage])[k], 'message ' || k, j.worker,
       j.start_date + k * interval '1 second',
       j.start_date + k * interval '1 second' + interval '20 ms', '{}'
FROM jobs AS j CROSS JOIN generate_series(1, 5) AS k
WHERE j.status NOT IN ('PENDING', 'PROCESSING', 'WAITING_FOR_REMOTE_WORKER') OR k <= 3
"""


def schema_hash() -> str:
    """A short hash of the schema.sql of the tracker under test."""
    store = importlib.import_module("tracker.store")
    return hashlib.sha256(store.schema_sql().encode()).hexdigest()[:12]


def marker(jobs: int) -> str:
    """What the cached dataset must say to be reused."""
    return f"v{DATASET_VERSION}:{jobs}:{schema_hash()}"


def init_db(url: str) -> None:
    """Apply schema.sql with the CLI of the tracker under test."""
    subprocess.run(
        db.tracker_cli("init-db", "--no-create", "--database", url), check=True, capture_output=True
    )


def build(dbs: db.Databases, name: str, jobs: int, rebuild: bool) -> dict[str, Any]:
    """Create (or reuse) the dataset; return how long each step took."""
    url = db.url_for(name)
    want = marker(jobs)
    if dbs.exists(name) and not rebuild:
        engine = db.create_engine(url)
        try:
            have = db.scalar(engine, "SELECT value FROM job_tracker_meta WHERE key = 'bench'")
        except sa.exc.SQLAlchemyError:
            have = None
        engine.dispose()
        if have == want:
            return {"reused": True}
    timings: dict[str, Any] = {"reused": False}
    began = time.perf_counter()
    dbs.drop(name)
    dbs.execute(f'CREATE DATABASE "{name}"')
    init_db(url)
    engine = db.create_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(DROP_SECONDARY_INDEXES)
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # skip FK triggers if allowed
            conn.exec_driver_sql("SET session_replication_role = replica")
        conn.exec_driver_sql("SELECT setseed(0.42)")
        step = time.perf_counter()
        conn.exec_driver_sql(LOAD_JOBS, {"jobs": jobs, "active": ACTIVE_JOBS, "users": USERS})
        timings["load_jobs_s"] = round(time.perf_counter() - step, 1)
        step = time.perf_counter()
        conn.exec_driver_sql(LOAD_HISTORY)
        timings["load_history_s"] = round(time.perf_counter() - step, 1)
    step = time.perf_counter()
    init_db(url)  # re-creates the secondary indexes
    timings["indexes_s"] = round(time.perf_counter() - step, 1)
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) jobs, job_events")
        conn.exec_driver_sql(
            "INSERT INTO job_tracker_meta (key, value) VALUES ('bench', %(m)s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            {"m": want},
        )
    engine.dispose()
    timings["total_s"] = round(time.perf_counter() - began, 1)
    return timings


# ---------------------------------------------------------------- the timed calls

Call = Callable[[random.Random], Any]


def service_calls(url: str) -> dict[str, Call] | None:
    """The read commands through JobService, or None when it does not exist."""
    try:
        service_mod = importlib.import_module("tracker.service")
        models = importlib.import_module("tracker.models")
    except ImportError:
        return None
    svc = service_mod.JobService(url)
    search = models.JobSearchRequest
    ids = _sample_ids(url)
    now = datetime.now(UTC)

    def user(rng: random.Random) -> str:
        return f"user-{int(rng.random() ** 2 * USERS):04d}"

    def window(rng: random.Random, days: int) -> tuple[datetime, datetime]:
        start = now - timedelta(days=rng.uniform(days, 90))
        return start, start + timedelta(days=days)

    def show(rng: random.Random) -> Any:
        job_id = rng.choice(ids)
        return svc.get_job(job_id), svc.get_history(job_id)

    return {
        "jobs (newest, page 1-5)": lambda rng: svc.search_jobs(
            search(offset=50 * rng.randrange(5))
        ),
        "jobs --user (page 1-5)": lambda rng: svc.search_jobs(
            search(user_id=user(rng), offset=50 * rng.randrange(5))
        ),
        "jobs --user --status --since 30d": lambda rng: svc.search_jobs(
            search(
                user_id=user(rng),
                status=rng.choice(["FINISHED", "FAILED"]),
                date_from=now - timedelta(days=30),
            )
        ),
        "jobs --status FAILED, 7-day window": lambda rng: svc.search_jobs(
            search(
                status="FAILED",
                date_from=(w := window(rng, 7))[0],
                date_to=w[1],
                offset=50 * rng.randrange(5),
            )
        ),
        "active": lambda rng: svc.get_active_jobs(),
        "active --user": lambda rng: svc.get_active_jobs(user(rng)),
        "show": show,
        "stats --days 30": lambda rng: svc.get_job_statistics(days=30),
    }


SQL_CALLS: dict[str, tuple[str, ...]] = {
    "jobs (newest, page 1-5)": (
        "SELECT *, count(*) OVER () FROM jobs ORDER BY start_date DESC, id DESC "
        "LIMIT 50 OFFSET %(offset)s",
    ),
    "jobs --user (page 1-5)": (
        "SELECT *, count(*) OVER () FROM jobs WHERE user_id = %(user)s "
        "ORDER BY start_date DESC, id DESC LIMIT 50 OFFSET %(offset)s",
    ),
    "jobs --user --status --since 30d": (
        "SELECT *, count(*) OVER () FROM jobs WHERE user_id = %(user)s AND status = %(status)s "
        "AND start_date >= now() - interval '30 days' ORDER BY start_date DESC, id DESC LIMIT 50",
    ),
    "jobs --status FAILED, 7-day window": (
        "SELECT *, count(*) OVER () FROM jobs WHERE status = 'FAILED' AND start_date >= %(since)s"
        " AND start_date <= %(since)s + interval '7 days' ORDER BY start_date DESC, id DESC "
        "LIMIT 50 OFFSET %(offset)s",
    ),
    "active": (
        "SELECT * FROM jobs WHERE status IN ('PENDING', 'WAITING_FOR_REMOTE_WORKER', "
        "'PROCESSING') ORDER BY start_date DESC, id DESC",
    ),
    "active --user": (
        "SELECT * FROM jobs WHERE status IN ('PENDING', 'WAITING_FOR_REMOTE_WORKER', "
        "'PROCESSING') AND user_id = %(user)s ORDER BY start_date DESC, id DESC",
    ),
    "show": (
        "SELECT * FROM jobs WHERE id = %(id)s",
        "SELECT * FROM job_events WHERE job_id = %(id)s ORDER BY occurred_at, id",
    ),
    "stats --days 30": (
        "SELECT count(*), avg(duration_seconds), percentile_cont(0.95) WITHIN GROUP "
        "(ORDER BY duration_seconds) FROM jobs WHERE start_date >= now() - interval '30 days'",
        "SELECT status, count(*) FROM jobs WHERE start_date >= now() - interval '30 days' "
        "GROUP BY status",
        "SELECT coalesce(document_type, task_name), count(*), percentile_cont(0.5) WITHIN "
        "GROUP (ORDER BY duration_seconds) FROM jobs WHERE start_date >= now() - "
        "interval '30 days' GROUP BY 1",
        "SELECT date_trunc('hour', start_date), count(*) FROM jobs WHERE start_date >= "
        "now() - interval '30 days' GROUP BY 1",
    ),
}


def sql_calls(url: str) -> dict[str, Call]:
    """The read commands as plain SQL (when tracker.service is not there)."""
    engine = db.create_engine(url)
    ids = _sample_ids(url)

    def runner(statements: tuple[str, ...]) -> Call:
        def call(rng: random.Random) -> Any:
            params = {
                "offset": 50 * rng.randrange(5),
                "id": rng.choice(ids),
                "user": f"user-{int(rng.random() ** 2 * USERS):04d}",
                "status": rng.choice(["FINISHED", "FAILED"]),
                "since": datetime.now(UTC) - timedelta(days=rng.uniform(7, 90)),
            }
            with engine.connect() as conn:
                return [conn.exec_driver_sql(s, params).all() for s in statements]

        return call

    return {name: runner(statements) for name, statements in SQL_CALLS.items()}


def _sample_ids(url: str) -> list[str]:
    """Some job ids to `show`."""
    engine = db.create_engine(url)
    with engine.connect() as conn:
        ids = [
            r[0]
            for r in conn.exec_driver_sql("SELECT id FROM jobs TABLESAMPLE SYSTEM (1) LIMIT 2000")
        ]
    engine.dispose()
    return ids


def time_calls(
    calls: dict[str, Call], rounds: int, warmup: int = 3, budget: float = 15.0
) -> dict[str, Any]:
    """p50/p95 latency (ms) of each call over `rounds` randomized rounds (fewer, but at
    least 10, when a call would take more than `budget` seconds)."""
    rng = random.Random(5)
    out: dict[str, Any] = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call(rng)
        samples = []
        deadline = time.perf_counter() + budget
        for n in range(rounds):
            began = time.perf_counter()
            call(rng)
            samples.append((time.perf_counter() - began) * 1000)
            if n >= 9 and began > deadline:
                break
        samples.sort()
        out[name] = {
            "p50_ms": round(samples[len(samples) // 2], 2),
            "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 2),
            "max_ms": round(samples[-1], 2),
            "rounds": len(samples),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """Build or reuse the dataset, time the read commands, print one JSON line."""
    p = argparse.ArgumentParser(prog="python -m bench.queries", description=main.__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args(argv)
    dbs = db.Databases()
    name = f"jt_bench_q{args.jobs}"
    built = build(dbs, name, args.jobs, args.rebuild)
    url = db.url_for(name)
    calls = service_calls(url)
    via = "tracker.service.JobService"
    if calls is None:
        calls, via = sql_calls(url), "equivalent SQL (tracker.service not found)"
    result = {
        "database": name,
        "jobs": args.jobs,
        "via": via,
        "build": built,
        "history_rows": db.scalar(db.create_engine(url), "SELECT count(*) FROM job_events"),
        "latency": time_calls(calls, args.rounds),
    }
    dbs.admin.dispose()
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
