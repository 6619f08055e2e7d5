"""Profile `job-tracker listen` under sustained load with py-spy; print where time goes.

    .venv/bin/pip install py-spy          # not a project dependency
    python -m bench.profile --tasks 40000 --seconds 25 --out /tmp/jt-prof

Starts listen on a fresh database, saturates it from Redis (flat out with back-pressure,
as the sustained phase does), records py-spy samples of every thread (raw collapsed
stacks, the input of flamegraph.pl or inferno) and prints, per thread, the functions with
the largest share of samples: "self" (the function itself was running) and "total" (on
the stack). With --gil only samples of the thread holding the GIL count: with the GIL
as the bottleneck, that shows what the process is serialized on.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import db, loadgen, subjects, wire


def py_spy() -> str:
    """The py-spy executable (venv first)."""
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: float, out: Path, rate: int, gil: bool) -> None:
    """py-spy record of every thread as raw collapsed stacks (flamegraph.pl/inferno input)."""
    base = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", str(rate), "--threads", "--nonblocking"]  # fmt: skip
    if gil:
        base.append("--gil")
    raw = subprocess.Popen([*base, "--format", "raw", "-o", str(out.with_suffix(".txt"))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    raw.wait()


def summarize(raw: Path, top: int) -> str:
    """Per thread: sample share of the hottest functions, self and inclusive."""
    threads: Counter[str] = Counter()
    selfs: dict[str, Counter[str]] = {}
    totals: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        calls = [_short(f) for f in frames[1:]]
        threads[thread] += count
        if calls:
            selfs.setdefault(thread, Counter())[calls[-1]] += count
        for name in set(calls):
            totals.setdefault(thread, Counter())[name] += count
    grand = sum(threads.values()) or 1
    everywhere: Counter[str] = Counter()
    for per_thread in selfs.values():
        everywhere.update(per_thread)
    lines = [f"all threads: {grand} samples; hottest functions (self %):"]
    lines += [f"  {100 * c / grand:7.1f}  {name}" for name, c in everywhere.most_common(top)]
    for thread, n in threads.most_common():
        lines.append(f"\n{thread}: {100 * n / grand:.1f} % of all samples ({n})")
        lines.append(f"  {'self %':>7} {'total %':>8}  function")
        for name, c in selfs.get(thread, Counter()).most_common(top):
            total = totals[thread][name]
            lines.append(f"  {100 * c / n:7.1f} {100 * total / n:8.1f}  {name}")
        lines.append("  -- largest inclusive:")
        for name, c in totals.get(thread, Counter()).most_common(top):
            lines.append(f"  {'':7} {100 * c / n:8.1f}  {name}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py)': samples add up per function."""
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
    return f"{name} ({module})" if where else name


def main(argv: list[str] | None = None) -> None:
    """Run listen under load, profile it, print the summary."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=main.__doc__)
    p.add_argument("--tasks", type=int, default=40_000)
    p.add_argument("--seconds", type=float, default=25.0)
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "jt-prof")
    p.add_argument("--redis-url", default="redis://localhost:6379/14")
    p.add_argument("--tracker-src", type=Path, default=db.REPO)
    p.add_argument("--listen-option", action="append", default=[])
    args = p.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="jt-prof-"))
    dbs = db.Databases(tracker_src=args.tracker_src)
    env = subjects.Env(logs, dbs, "prof", args.tracker_src)
    number = loadgen.redis_db(args.redis_url)
    client = loadgen.redis_client(args.redis_url)
    prep = loadgen.prepare(wire.StreamSpec(tasks=args.tasks), "redis", number)
    listen = subjects.Listen(env, args.listen_option)
    listen.start(args.redis_url, expect=prep.total_task_events)
    try:
        loadgen.wait_subscribed(client, number)
        publisher = threading.Thread(
            target=loadgen.publish_backpressured, args=(client, prep, number), daemon=True
        )
        began = time.time()
        publisher.start()
        time.sleep(1.0)  # past start-up: profile the steady state
        record(listen.pid, args.seconds, args.out, args.rate, args.gil)
        got, done = listen.wait_for(prep.total_task_events, timeout=600, idle=30)
        rate = got / ((done or time.time()) - began)
    finally:
        listen.stop()
        listen.drop_db()
        dbs.cleanup()
    print(f"{got} of {prep.total_task_events} events persisted, {rate:,.0f} ev/s overall")
    print(f"raw stacks: {args.out.with_suffix('.txt')}; listen log: {logs}")
    print(summarize(args.out.with_suffix(".txt"), args.top))


if __name__ == "__main__":
    main()
