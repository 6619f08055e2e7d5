"""Markdown tables from the raw results of bench.run."""

from __future__ import annotations

from typing import Any

NAMES = {
    "receiver": "Celery EventReceiver, no-op handler (ceiling)",
    "naive": "naive: ORM session + commit per event",
    "listen": "job-tracker listen",
}
SEARCH_P95_MS = 50.0
STATS_P95_MS = 500.0


def _get(data: dict[str, Any], *path: str) -> Any:
    """A nested value, or None."""
    value: Any = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def num(value: Any, digits: int = 0) -> str:
    """A number with thousands separators, '-' when missing."""
    if value is None:
        return "-"
    if value == "inf":
        return "∞ (lost)"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    """A share as a percentage."""
    return f"{100 * value:.0f} %" if isinstance(value, int | float) else "-"


def ratio(a: Any, b: Any) -> str:
    """a / b as '1.23x', '-' when either is missing."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def consumers_table(r: dict[str, Any]) -> str:
    """Throughput and cost, one row per consumer (sustained phases)."""
    ceiling = _get(r, "sustained-redis", "receiver", "rate")
    naive = _get(r, "sustained-redis", "naive", "rate")
    ceiling_amqp = _get(r, "sustained-amqp", "receiver", "rate")
    naive_amqp = _get(r, "sustained-amqp", "naive", "rate")
    rows = []
    for kind, name in NAMES.items():
        redis_rate = _get(r, "sustained-redis", kind, "rate")
        amqp_rate = _get(r, "sustained-amqp", kind, "rate")
        s = _get(r, "sustained-redis", kind) or {}
        rows.append([
            name, num(s.get("events")), num(redis_rate), ratio(redis_rate, ceiling),
            ratio(redis_rate, naive), num(amqp_rate), ratio(amqp_rate, ceiling_amqp),
            ratio(amqp_rate, naive_amqp), num(s.get("cpu_s_per_100k"), 2),
            num(s.get("pg_cpu_s_per_100k"), 2), num(s.get("peak_rss_mb"), 1),
            pct(s.get("other_processes_cpu_share")),
        ])  # fmt: skip
    header = ["consumer", "events", "sustained ev/s, Redis", "x ceiling", "x naive",
              "sustained ev/s, RabbitMQ", "x ceiling", "x naive", "CPU s / 100k ev",
              "PostgreSQL CPU s / 100k ev", "peak RSS MB", "other processes' CPU"]  # fmt: skip
    return table(header, rows)


def lag_burst_table(r: dict[str, Any]) -> str:
    """Lag at a fixed rate and burst survival, one row per consumer (Redis)."""
    burst_ceiling = _get(r, "burst", "receiver", "largest_without_loss")
    rows = []
    for kind, name in NAMES.items():
        lag = _get(r, "lag", kind) or {}
        burst = _get(r, "burst", kind) or {}
        largest = burst.get("largest_without_loss")
        first_loss = burst.get("smallest_with_loss")
        kept_loss = (f"{num(burst.get('kept_of_smallest_loss'))} of {num(first_loss)}"
                     if first_loss else "no loss")  # fmt: skip
        rows.append([
            name, num(lag.get("p50_s"), 3), num(lag.get("p99_s"), 3), num(lag.get("max_s"), 3),
            f"{num(lag.get('kept'))} / {num(lag.get('events'))}", num(largest),
            ratio(largest, burst_ceiling), kept_loss,
        ])  # fmt: skip
    rate = num(_get(r, "lag", "rate"))
    header = [
        "consumer", f"lag p50 s @ {rate} ev/s", "lag p99 s", "lag max s",
        "kept @ fixed rate", "largest burst w/o loss", "x receiver",
        "kept of the smallest burst with loss",
    ]  # fmt: skip
    return table(header, rows)


def burst_table(r: dict[str, Any]) -> str:
    """Every burst trial."""
    rows = []
    for kind in NAMES:
        for t in _get(r, "burst", kind, "trials") or []:
            kept = num(t["kept"]) + (" (delivered)" if t.get("kept_by_delivery") else "")
            rows.append(
                [
                    kind,
                    num(t["events"]),
                    kept,
                    num(t["lost"]),
                    num(t["peak_omem_mb"], 1),
                    "yes" if t["disconnected"] else "no",
                    num(t["publish_rate"]),
                    num(t.get("peak_rss_mb"), 1),
                ]
            )
    return table(
        [
            "consumer",
            "burst events",
            "kept",
            "lost",
            "peak Redis output buffer MB",
            "disconnected by Redis",
            "publish ev/s",
            "peak RSS MB",
        ],
        rows,
    )


def memory_table(r: dict[str, Any]) -> str:
    """RSS of listen over the long run."""
    m = r.get("memory") or {}
    if not m:
        return ""
    check = m.get("check") or {}
    row = [
        num(m.get("events")),
        num(m.get("rate")),
        num(m.get("rss_start_mb"), 1),
        num(m.get("rss_at_10pct_mb"), 1),
        num(m.get("peak_rss_mb"), 1),
        num(m.get("rss_end_mb"), 1),
        num(m.get("rss_growth_mb"), 1),
        num(m.get("cpu_s_per_100k"), 2),
        "yes" if check.get("ok") else "NO",
    ]
    return table(
        [
            "events",
            "fixed rate ev/s",
            "RSS start MB",
            "RSS at 10 % MB",
            "peak RSS MB",
            "RSS end MB",
            "growth MB",
            "CPU s / 100k ev",
            "rows correct",
        ],
        [row],
    )


def query_table(r: dict[str, Any]) -> str:
    """Read-command latency."""
    q = r.get("queries") or {}
    if not q.get("latency"):
        return f"query phase: {q.get('error', 'not run')}" if q else ""
    rows = []
    for name, v in q["latency"].items():
        target = STATS_P95_MS if name.startswith("stats") else SEARCH_P95_MS
        met = "yes" if v["p95_ms"] <= target else "NO"
        rows.append([name, num(v["p50_ms"], 1), num(v["p95_ms"], 1), f"≤ {target:g}", met])
    return table(["command (JobService call)", "p50 ms", "p95 ms", "target p95 ms", "met"], rows)


def checks_table(r: dict[str, Any]) -> str:
    """Correctness of the rows job-tracker listen wrote, per phase."""
    rows = []
    for phase in ("sustained-redis", "sustained-amqp", "memory"):
        check = _get(r, phase, "listen", "check") if phase != "memory" else _get(r, phase, "check")
        if not check:
            continue
        bad = {
            k: v for k, v in check.items() if k.startswith(("missing", "unexpected", "wrong")) and v
        }
        rows.append(
            [
                phase,
                f"{num(check['jobs'])} / {num(check['expected_jobs'])}",
                f"{num(check['job_events'])} / {num(check['expected_job_events'])}",
                "yes" if check["ok"] else f"NO {bad}",
            ]
        )
    return table(
        ["phase", "jobs rows / expected", "job_events rows / expected", "every row correct"], rows
    )


def targets_table(r: dict[str, Any]) -> str:
    """The issue's targets, measured."""
    ceiling = _get(r, "sustained-redis", "receiver", "rate")
    naive = _get(r, "sustained-redis", "naive", "rate")
    listen = _get(r, "sustained-redis", "listen", "rate")
    p99 = _get(r, "lag", "listen", "p99_s")
    burst = _get(r, "burst", "listen", "largest_without_loss")
    burst_ceiling = _get(r, "burst", "receiver", "largest_without_loss")
    growth = _get(r, "memory", "rss_growth_mb")
    lat = _get(r, "queries", "latency") or {}
    search = max((v["p95_ms"] for k, v in lat.items() if not k.startswith("stats")), default=None)
    stats = max((v["p95_ms"] for k, v in lat.items() if k.startswith("stats")), default=None)

    def met(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "NO")

    def cmp(a: Any, b: Any, factor: float) -> bool | None:
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return None
        return bool(a >= factor * b)

    rows = [
        ["sustained ≥ 1.0x ceiling", ratio(listen, ceiling), met(cmp(listen, ceiling, 1.0))],
        ["sustained ≥ 20x naive", ratio(listen, naive), met(cmp(listen, naive, 20.0))],
        [
            "moonshot: sustained ≥ 2x ceiling",
            ratio(listen, ceiling),
            met(cmp(listen, ceiling, 2.0)),
        ],
        [
            "lag p99 ≤ 1 s at half the ceiling",
            f"{num(p99, 3)} s",
            met(None if p99 is None else p99 != "inf" and float(p99) <= 1.0),
        ],
        [
            "largest burst ≥ 2x EventReceiver's",
            ratio(burst, burst_ceiling),
            met(cmp(burst, burst_ceiling, 2.0)),
        ],
        [
            "RSS growth ≤ 50 MB over the memory run",
            f"{num(growth, 1)} MB",
            met(None if growth is None else growth <= 50),
        ],
        [
            "search/active/show p95 ≤ 50 ms",
            f"{num(search, 1)} ms",
            met(None if search is None else search <= SEARCH_P95_MS),
        ],
        [
            "stats --days 30 p95 ≤ 500 ms",
            f"{num(stats, 1)} ms",
            met(None if stats is None else stats <= STATS_P95_MS),
        ],
    ]
    return table(["target (issue 5)", "measured", "met"], rows)


def markdown(r: dict[str, Any]) -> str:
    """Every table, with a one-line context header."""
    machine = r.get("machine", {})
    tracker = r.get("tracker", {})
    q = r.get("queries") or {}
    parts = [
        f"## job-tracker benchmark ({'quick' if _get(r, 'config', 'quick') else 'full'} run, "
        f"{machine.get('cores')} cores, {machine.get('cpu')}; tracker {tracker.get('commit')}"
        f"{' + local changes' if tracker.get('tracker_dirty') else ''}; "
        f"{r.get('total_s', '?')} s)",
        "### Consumers side by side: sustained ingest (same generated stream)",
        consumers_table(r),
        "### Lag at a fixed rate (half the ceiling) and bursts, Redis",
        lag_burst_table(r),
        "### Targets",
        targets_table(r),
        "### Correctness of job-tracker listen's rows",
        checks_table(r),
        "### Burst trials on Redis (flat out)",
        burst_table(r),
        "### Memory of job-tracker listen",
        memory_table(r),
        f"### Query latency ({num(q.get('jobs'))} jobs, {num(q.get('history_rows'))} history "
        f"rows; via {q.get('via', '-')})",
        query_table(r),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def main() -> None:
    """Re-render the tables of a results file: python -m bench.report FILE.json"""
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
