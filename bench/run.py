"""The whole benchmark in one command; prints a markdown table and writes raw JSON.

    python -m bench.run            # full run (about 12 min on 2 cores)
    python -m bench.run --quick    # small N, about 2 min

Phases (each consumer gets the identical generated stream, one consumer at a time so
none competes with another for the 2 cores):
1. sustained-redis: flat out with back-pressure on Redis; rate = task events /
   (first publish -> last event counted / committed);
2. sustained-amqp: a durable queue pre-filled on RabbitMQ, then drained;
3. lag: Redis at a fixed rate (half the ceiling measured in phase 1); lag = time the row
   became visible (polled every 50 ms) - event timestamp; lost events count as infinite;
4. burst: Redis, flat out, doubling sizes until a consumer loses events;
5. memory: 1 000 000 events through `job-tracker listen` at a fixed rate; RSS over time;
6. queries: read-command latency on 1 000 000 jobs with history.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench import db, loadgen, procs, report, subjects, wire

KINDS = ("receiver", "naive", "listen")
PHASES = ("sustained-redis", "sustained-amqp", "lag", "burst", "memory", "queries")
SOFT_LIMIT = 8 << 20  # Redis client-output-buffer-limit pubsub soft limit (bytes)
RESULTS = Path(__file__).resolve().parent / "results"
EVENTS_PER_TASK = 7.42  # average of the generated lifecycles


@dataclass
class Config:
    """Sizes and services of one run."""

    quick: bool = False
    tasks: int = 30_000
    naive_events: int = 15_000
    lag_seconds: float = 12.0
    lag_rate: float = 0.0  # 0: half the ceiling measured in sustained-redis
    bursts: list[int] = field(default_factory=lambda: [10_000 * 2**i for i in range(7)])
    refine_bursts: bool = True
    memory_events: int = 1_000_000
    memory_rate: float = 0.0  # 0: 0.8 x listen's sustained rate, at most half the ceiling
    query_jobs: int = 1_000_000
    query_rounds: int = 100
    redis_url: str = "redis://localhost:6379/14"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    tracker_src: str = str(db.REPO)
    tracker_rev: str | None = None  # measure `git archive <rev>` instead of tracker_src
    listen_options: list[str] = field(default_factory=list)
    keep_databases: bool = False
    seed: int = 7


QUICK = {
    "tasks": 1_500,
    "naive_events": 3_000,
    "lag_seconds": 4.0,
    "bursts": [5_000, 20_000, 80_000],
    "refine_bursts": False,
    "memory_events": 50_000,
    "query_jobs": 50_000,
    "query_rounds": 20,
}


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile of sorted values (inf entries stand for lost events)."""
    if not sorted_values:
        return math.inf
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class OmemMonitor:
    """Watches a subscriber's Redis output buffer, and whether Redis disconnected it."""

    def __init__(self, client: redis.Redis, db_number: int, interval: float = 0.02) -> None:
        self.client = client
        self.db = db_number
        self.interval = interval
        self.ids = {c["id"] for c in loadgen.subscribers(client, db_number)}
        self.peak = 0
        self.current = 0
        self.disconnected_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OmemMonitor:
        """Begin watching."""
        self._thread.start()
        return self

    def sample(self) -> None:
        """One look at CLIENT LIST."""
        subs = {c["id"]: int(c.get("omem", 0)) for c in loadgen.subscribers(self.client, self.db)}
        if self.disconnected_at is None and not self.ids <= subs.keys():
            self.disconnected_at = time.time()
        self.current = max((subs.get(i, 0) for i in self.ids), default=0)
        self.peak = max(self.peak, self.current)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(5)


class Bench:
    """Runs the phases and collects results."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.logs = Path(tempfile.mkdtemp(prefix="jt-bench-"))
        if cfg.tracker_rev:
            self.tracker_src = export_rev(cfg.tracker_rev, self.logs / "tracker-src")
        else:
            self.tracker_src = Path(cfg.tracker_src).resolve()
        self.db_number = loadgen.redis_db(cfg.redis_url)
        self.redis = loadgen.redis_client(cfg.redis_url)
        self.dbs = db.Databases(tracker_src=self.tracker_src)
        run_id = datetime.now().strftime("%H%M%S")
        self.env = subjects.Env(
            self.logs, self.dbs, run_id, self.tracker_src, keep_databases=cfg.keep_databases
        )
        self.results: dict[str, Any] = {
            "config": asdict(cfg),
            "machine": machine_info(),
            "tracker": tracker_info(self.tracker_src, cfg.tracker_rev),
            "logs": str(self.logs),
        }

    def subject(self, kind: str) -> subjects.Subject:
        """A fresh consumer of `kind` (listen gets the run's extra options)."""
        if kind == "listen":
            return subjects.Listen(self.env, self.cfg.listen_options)
        return subjects.make(kind, self.env)

    def spec(self, tasks: int, seed_offset: int = 0) -> wire.StreamSpec:
        """The generated stream's shape."""
        return wire.StreamSpec(tasks=max(1, tasks), seed=self.cfg.seed + seed_offset)

    def run(self) -> dict[str, Any]:
        """Every selected phase, in order."""
        self.check_services()
        for phase in self.cfg.phases:
            began = time.monotonic()
            log(f"phase {phase}")
            method = getattr(self, "phase_" + phase.replace("-", "_"))
            self.results[phase] = method()
            self.results[phase]["phase_s"] = round(time.monotonic() - began, 1)
        self.dbs.cleanup(keep=self.cfg.keep_databases)
        return self.results

    def check_services(self) -> None:
        """Fail early when a service is missing or a stale subscriber listens on our db."""
        self.redis.ping()
        stale = loadgen.subscribers(self.redis, self.db_number)
        if stale:
            raise SystemExit(f"redis db {self.db_number} already has subscribers: {stale}")

    # ------------------------------------------------------------ sustained (Redis)

    def phase_sustained_redis(self) -> dict[str, Any]:
        prep = loadgen.prepare(self.spec(self.cfg.tasks), "redis", self.db_number)
        out: dict[str, Any] = {"stream": stream_info(prep)}
        for kind in self.cfg.kinds:
            end, events = self.extent(kind, prep)
            log(f"  {kind}: {events} task events")
            out[kind] = self.sustained_redis(kind, prep, end, events)
            log(f"  {kind}: {fmt_rate(out[kind].get('rate'))} ev/s")
        return out

    def extent(self, kind: str, prep: loadgen.Prepared) -> tuple[int, int]:
        """(messages, task events) a consumer gets: the naive tracker only a prefix."""
        if kind == "naive":
            return prep.prefix_for(self.cfg.naive_events)
        return prep.messages, prep.total_task_events

    def sustained_redis(
        self, kind: str, prep: loadgen.Prepared, end: int, events: int
    ) -> dict[str, Any]:
        s = self.subject(kind)
        s.start(self.cfg.redis_url, expect=events)
        try:
            loadgen.wait_subscribed(self.redis, self.db_number)
            meter = Meter(s.pid)
            publish_s = loadgen.publish_backpressured(self.redis, prep, self.db_number, 0, end)
            gen_cpu = time.process_time() - meter.gen0
            got, done = s.wait_for(events, timeout=max(120.0, events / 200), idle=30)
            result = meter.finish(got, done)
            result.update(
                publish_s=round(publish_s, 2),
                gen_cpu_us_per_event=round(gen_cpu / max(1, events) * 1e6, 2),
            )
            if isinstance(s, subjects.Listen):
                expected = prep.expected if end == prep.messages else {}
                result["check"] = db.check_listen(s.engine, expected) if expected else None
                result["gap_warnings"] = len(s.log_events("event_gap"))
        finally:
            s.stop()
            s.drop_db()
        return result

    # ------------------------------------------------------------ sustained (RabbitMQ)

    def phase_sustained_amqp(self) -> dict[str, Any]:
        prep = loadgen.prepare(self.spec(self.cfg.tasks), "amqp")
        out: dict[str, Any] = {"stream": stream_info(prep)}
        pub = loadgen.AmqpPublisher(self.cfg.amqp_url)
        try:
            for kind in self.cfg.kinds:
                end, events = self.extent(kind, prep)
                log(f"  {kind}: {events} task events")
                out[kind] = self.sustained_amqp(pub, kind, prep, end, events)
                log(f"  {kind}: {fmt_rate(out[kind].get('rate'))} ev/s")
        finally:
            pub.close()
        return out

    def sustained_amqp(
        self, pub: loadgen.AmqpPublisher, kind: str, prep: loadgen.Prepared, end: int, events: int
    ) -> dict[str, Any]:
        queue = f"jt-bench.{kind}"
        pub.declare_queue(queue)
        publish_s = pub.publish(prep, 0, end)
        while pub.queue_depth(queue)[0] < end:
            time.sleep(0.05)
        s = self.subject(kind)
        s.start(self.cfg.amqp_url, expect=events, queue=queue)
        try:
            while pub.queue_depth(queue)[1] < 1 and s.alive():
                time.sleep(0.01)
            meter = Meter(s.pid)
            got, done = s.wait_for(events, timeout=max(120.0, events / 200), idle=30)
            result = meter.finish(got, done)
            result["prefill_s"] = round(publish_s, 2)
            if isinstance(s, subjects.Listen) and end == prep.messages:
                result["check"] = db.check_listen(s.engine, prep.expected)
        finally:
            s.stop()
            s.drop_db()
            pub.delete_queue(queue)
        return result

    # ------------------------------------------------------------ lag at a fixed rate

    def ceiling(self) -> float | None:
        """The no-op EventReceiver's sustained rate on Redis, when measured."""
        rate = self.results.get("sustained-redis", {}).get("receiver", {}).get("rate")
        return float(rate) if rate else None

    def phase_lag(self) -> dict[str, Any]:
        rate = self.cfg.lag_rate or (self.ceiling() or 20_000.0) / 2
        tasks = int(rate * self.cfg.lag_seconds / EVENTS_PER_TASK)
        out: dict[str, Any] = {"rate": round(rate), "seconds": self.cfg.lag_seconds}
        for kind in self.cfg.kinds:
            log(f"  {kind} at {rate:,.0f} ev/s for {self.cfg.lag_seconds:g}s")
            out[kind] = self.lag(kind, tasks, rate)
            log(f"  {kind}: p50 {out[kind]['p50_s']} s, p99 {out[kind]['p99_s']} s")
        return out

    def lag(self, kind: str, tasks: int, rate: float) -> dict[str, Any]:
        s = self.subject(kind)
        s.start(self.cfg.redis_url, expect=0, lag=True)
        try:
            loadgen.wait_subscribed(self.redis, self.db_number)
            plan = loadgen.prepare_at_rate(self.spec(tasks, 1), self.db_number, rate)
            events = plan.prep.total_task_events
            poller = s.lag_poller()
            if poller is not None:
                poller.start()
            meter = Meter(s.pid)
            lateness = loadgen.publish_at_rate(self.redis, plan)
            got, _ = s.wait_for(events, timeout=15.0, idle=5.0)
            result = meter.finish(got, None)
            lags = poller.stop() if poller is not None else []
        finally:
            s.stop()
            s.drop_db()
        if isinstance(s, subjects.Receiver) and poller is None:
            lags = s.lags()
        kept = len(lags)
        values = sorted(lags) + [math.inf] * max(0, events - kept)
        result.update(
            events=events,
            kept=kept,
            lost_or_late=events - kept,
            p50_s=round_or_inf(percentile(values, 0.5)),
            p99_s=round_or_inf(percentile(values, 0.99)),
            max_s=round_or_inf(values[-1] if values else math.inf),
            generator_max_late_s=round(lateness["max_late_s"], 4),
        )
        return result

    # ------------------------------------------------------------ burst

    def phase_burst(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in self.cfg.kinds:
            out[kind] = self.burst_search(kind)
            log(f"  {kind}: largest burst without loss {out[kind]['largest_without_loss']}")
        if self._burst_prep is not None:
            out["stream"] = stream_info(self._burst_prep)
        return out

    _burst_prep: loadgen.Prepared | None = None

    def burst_stream(self, size: int) -> loadgen.Prepared:
        """A stream with at least `size` events in whole groups (streams of one seed share
        their prefixes, so a longer one is only encoded when a trial needs it)."""
        prep = self._burst_prep
        if prep is None or prep.total_task_events < 1.2 * size + 1000:
            tasks = int(min(2 * size, max(self.cfg.bursts)) * 1.2 / EVENTS_PER_TASK) + 128
            prep = self._burst_prep = loadgen.prepare(self.spec(tasks, 2), "redis", self.db_number)
        return prep

    def burst_search(self, kind: str) -> dict[str, Any]:
        trials: list[dict[str, Any]] = []
        good: dict[str, Any] | None = None
        bad: dict[str, Any] | None = None
        for size in self.cfg.bursts:
            trial = self.burst(kind, self.burst_stream(size), size)
            trials.append(trial)
            if trial["lost"]:
                bad = trial
                break
            good = trial
        if self.cfg.refine_bursts and good is not None and bad is not None:
            size = int(math.sqrt(good["events"] * bad["events"]))
            trial = self.burst(kind, self.burst_stream(size), size)
            trials.append(trial)
            if trial["lost"]:
                bad = trial
            else:
                good = trial
        return {
            "largest_without_loss": good["events"] if good else 0,
            "smallest_with_loss": bad["events"] if bad else None,
            "kept_of_smallest_loss": bad["kept"] if bad else None,
            "trials": trials,
        }

    def burst(self, kind: str, prep: loadgen.Prepared, size: int) -> dict[str, Any]:
        end, events = prep.prefix_for(size)
        log(f"  {kind}: burst of {events} events")
        s = self.subject(kind)
        s.start(self.cfg.redis_url, expect=events)
        try:
            loadgen.wait_subscribed(self.redis, self.db_number)
            monitor = OmemMonitor(self.redis, self.db_number).start()
            took = loadgen.publish_flat(self.redis, prep, 0, end)
            kept, delivered_only = self.burst_outcome(s, monitor, events)
            monitor.stop()
            peak_rss = procs.peak_rss_mb(s.pid)
        finally:
            s.stop()
            s.drop_db()
        lost = events - kept
        return {
            "events": events,
            "kept": kept,
            "lost": lost,
            "publish_rate": round(events / took),
            "peak_omem_mb": round(monitor.peak / 2**20, 1),
            "disconnected": monitor.disconnected_at is not None,
            "kept_by_delivery": delivered_only,
            "peak_rss_mb": round(peak_rss, 1),
        }

    def burst_outcome(
        self, s: subjects.Subject, monitor: OmemMonitor, events: int
    ) -> tuple[int, bool]:
        """Events kept, and whether that was inferred from delivery rather than counted.

        A consumer Redis did not disconnect by the time its output buffer is under the
        soft limit has been handed every event; the slow naive tracker is not waited for
        to process them all (minutes), the others are counted.
        """
        deadline = time.monotonic() + 180
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            monitor.sample()
            got = s.progress(events)
            if got >= events:
                return got, False
            delivered = monitor.disconnected_at is None and monitor.current < SOFT_LIMIT
            if delivered and isinstance(s, subjects.Naive):
                return events, True
            if got != last:
                last, last_change = got, time.monotonic()
            elif monitor.disconnected_at is not None and time.monotonic() - last_change > 5:
                return got, False
            time.sleep(0.1)
        return s.progress(events), False

    # ------------------------------------------------------------ memory

    def phase_memory(self) -> dict[str, Any]:
        listen_rate = self.results.get("sustained-redis", {}).get("listen", {}).get("rate")
        ceiling = self.ceiling() or 20_000.0
        rate = self.cfg.memory_rate or min(0.8 * (listen_rate or 5_000.0), ceiling / 2)
        tasks = math.ceil(self.cfg.memory_events * 1.003 / EVENTS_PER_TASK)
        log(f"  listen: {self.cfg.memory_events:,} events at {rate:,.0f} ev/s")
        s = self.subject("listen")
        s.start(self.cfg.redis_url, expect=0)
        try:
            loadgen.wait_subscribed(self.redis, self.db_number)
            time.sleep(1.0)
            rss_start = procs.rss_mb(s.pid)
            sampler = procs.RssSampler(s.pid, interval=1.0).start()
            plan = loadgen.prepare_at_rate(self.spec(tasks, 3), self.db_number, rate)
            events = plan.prep.total_task_events
            meter = Meter(s.pid)
            loadgen.publish_at_rate(self.redis, plan)
            got, done = s.wait_for(events, timeout=300, idle=30)
            result = meter.finish(got, done)
            rss_end = procs.rss_mb(s.pid)
            samples = sampler.stop()
            assert isinstance(s, subjects.Listen)
            result["check"] = db.check_listen(s.engine, plan.prep.expected)
            result["gap_warnings"] = len(s.log_events("event_gap"))
        finally:
            s.stop()
            s.drop_db()
        span = samples[-1][0] if samples else 0.0
        tenth = next((mb for t, mb in samples if t >= 0.1 * span), rss_start)
        result.update(
            rate=round(rate),
            events=events,
            rss_start_mb=round(rss_start, 1),
            rss_at_10pct_mb=tenth,
            rss_end_mb=round(rss_end, 1),
            rss_growth_mb=round(rss_end - rss_start, 1),
            rss_samples=samples,
        )
        return result

    # ------------------------------------------------------------ queries

    def phase_queries(self) -> dict[str, Any]:
        log(f"  {self.cfg.query_jobs:,} jobs (built once, then reused)")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.queries",
                "--jobs",
                str(self.cfg.query_jobs),
                "--rounds",
                str(self.cfg.query_rounds),
            ],
            env=db.tracker_env(self.tracker_src),
            cwd=self.tracker_src,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


class Meter:
    """CPU of the consumer, of the services and of everything else, and wall time."""

    SERVICES = ("postgres", "redis-server", "beam.smp")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = procs.cpu_seconds(pid)
        self.services0 = {name: procs.cpu_of_command(name) for name in self.SERVICES}
        self.busy0 = procs.busy_cpu_seconds()
        self.self0 = procs.cpu_seconds(os.getpid())
        self.gen0 = time.process_time()
        self.t0 = time.time()

    def finish(self, events: int, done_at: float | None) -> dict[str, Any]:
        """Rate (when the consumer finished), CPU per 100k events, peak RSS, interference."""
        end = done_at or time.time()
        wall = max(1e-9, time.time() - self.t0)
        cpu = procs.cpu_seconds(self.pid) - self.cpu0
        services = {n: procs.cpu_of_command(n) - v for n, v in self.services0.items()}
        generator = procs.cpu_seconds(os.getpid()) - self.self0
        busy = procs.busy_cpu_seconds() - self.busy0
        others = max(0.0, busy - cpu - generator - sum(services.values()))
        per = 100_000 / max(1, events)
        return {
            "events": events,
            "complete": done_at is not None,
            "seconds": round(end - self.t0, 2),
            "rate": round(events / (end - self.t0)) if done_at else None,
            "cpu_s": round(cpu, 2),
            "cpu_s_per_100k": round(cpu * per, 2),
            "pg_cpu_s_per_100k": round(services["postgres"] * per, 2),
            "redis_cpu_s": round(services["redis-server"], 2),
            "generator_cpu_s": round(generator, 2),
            "other_processes_cpu_share": round(others / (wall * (os.cpu_count() or 1)), 3),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "peak_rss_mb": round(procs.peak_rss_mb(self.pid), 1),
        }


def round_or_inf(value: float) -> float | str:
    """Seconds rounded to ms, or 'inf' (lost events)."""
    return "inf" if math.isinf(value) else round(value, 3)


def fmt_rate(value: Any) -> str:
    """A rate for the progress log."""
    return f"{value:,.0f}" if isinstance(value, int | float) else "incomplete"


def stream_info(prep: loadgen.Prepared) -> dict[str, Any]:
    """Shape of a prepared stream."""
    return {
        "tasks": len(prep.expected),
        "messages": prep.messages,
        "task_events": prep.total_task_events,
        "multi_messages": sum(1 for c in prep.channels if c.endswith(b"task.multi")),
        "bytes_per_event": round(sum(map(len, prep.payloads)) / max(1, prep.total_task_events)),
        "encode_s": round(prep.encode_s, 2),
    }


def machine_info() -> dict[str, Any]:
    """The machine the figures come from."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * procs.PAGE / 2**30, 1),
    }


def git(*args: str, cwd: Path = db.REPO) -> str:
    """Output of a git command in the repository."""
    exe = shutil.which("git") or "git"
    proc = subprocess.run([exe, "-C", str(cwd), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def export_rev(rev: str, dest: Path) -> Path:
    """Extract tracker/, schema.sql (and the rest) of commit `rev` into `dest`."""
    exe = shutil.which("git") or "git"
    archive = subprocess.run(
        [exe, "-C", str(db.REPO), "archive", "--format=tar", rev], capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def tracker_info(src: Path, rev: str | None) -> dict[str, Any]:
    """Which tracker code was measured: commit, and whether tracker/ had local changes."""
    if rev:
        return {
            "src": f"git archive {rev}",
            "commit": git("rev-parse", "--short", rev),
            "tracker_dirty": False,
        }
    dirty = git("status", "--porcelain", "--", "tracker", "schema.sql", cwd=src)
    return {
        "src": str(src),
        "commit": git("rev-parse", "--short", "HEAD", cwd=src),
        "tracker_dirty": bool(dirty),
    }


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    """Command-line options onto a Config; also whether to save the results."""
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    p.add_argument("--tasks", type=int, help="tasks in the sustained streams (default 30000)")
    p.add_argument("--naive-events", type=int, help="events given to the naive tracker")
    p.add_argument("--lag-seconds", type=float)
    p.add_argument("--lag-rate", type=float, help="events/s (default: half the ceiling)")
    p.add_argument("--bursts", help="comma-separated burst sizes in events")
    p.add_argument("--memory-events", type=int)
    p.add_argument("--memory-rate", type=float)
    p.add_argument("--query-jobs", type=int)
    p.add_argument("--query-rounds", type=int)
    p.add_argument("--phases", help=f"comma list of {','.join(PHASES)}")
    p.add_argument("--consumers", help=f"comma list of {','.join(KINDS)}")
    p.add_argument("--redis-url", default="redis://localhost:6379/14")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument(
        "--tracker-src",
        default=str(db.REPO),
        help="checkout whose tracker/ is measured (default: this repository)",
    )
    p.add_argument("--tracker-rev", help="measure this commit (git archive) instead")
    p.add_argument(
        "--listen-option",
        action="append",
        default=[],
        help="extra option for job-tracker listen (repeatable)",
    )
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = p.parse_args(argv)
    cfg = Config(**(QUICK if args.quick else {}))  # type: ignore[arg-type]
    cfg.quick = args.quick
    for name in (
        "tasks",
        "naive_events",
        "lag_seconds",
        "lag_rate",
        "memory_events",
        "memory_rate",
        "query_jobs",
        "query_rounds",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.bursts:
        cfg.bursts = [int(b) for b in args.bursts.split(",")]
    if args.phases:
        cfg.phases = [p for p in PHASES if p in args.phases.split(",")]
    if args.consumers:
        cfg.kinds = [k for k in KINDS if k in args.consumers.split(",")]
    cfg.redis_url, cfg.amqp_url, cfg.tracker_src = args.redis_url, args.amqp_url, args.tracker_src
    cfg.tracker_rev = args.tracker_rev
    cfg.listen_options, cfg.keep_databases, cfg.seed = (
        args.listen_option,
        args.keep_databases,
        args.seed,
    )
    return cfg, not args.no_save


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table, save the raw results."""
    cfg, save = parse_args(argv)
    started = datetime.now(UTC)
    bench = Bench(cfg)
    results = bench.run()
    results["started"] = started.isoformat()
    results["total_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    table = report.markdown(results)
    print(table)
    if save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if cfg.quick else ''}.json"
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        log(f"raw results: {path}")
    log(f"consumer logs: {bench.logs}")


if __name__ == "__main__":
    main()
