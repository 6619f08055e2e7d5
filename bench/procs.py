"""Processes under test: start/stop them, and read their CPU time and memory from /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM...), 0 when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    return status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) in MB."""
    return status_kb(pid, "VmHWM") / 1024


def cpu_of_command(name: str) -> float:
    """CPU seconds summed over every process whose comm is `name` (e.g. postgres)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                total += cpu_seconds(int(entry.name))
        except OSError:
            continue
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class RssSampler:
    """Samples a process's RSS in a background thread."""

    pid: int
    interval: float = 0.5
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RssSampler:
        """Begin sampling."""
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(self.interval):
            rss = rss_mb(self.pid)
            if rss:
                self.samples.append((round(time.monotonic() - began, 2), round(rss, 1)))

    def stop(self) -> list[tuple[float, float]]:
        """Stop sampling; return (seconds, MB) samples."""
        self._stop.set()
        return self.samples


class Child:
    """A subprocess in its own session, logging to a file; optionally reading JSON status."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        status_from_stdout: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log: TextIO = log_path.open("w")
        self.status: dict[str, Any] = {}
        self.final: dict[str, Any] = {}
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE if status_from_stdout else self._log,
            stderr=self._log,
            start_new_session=True,
            text=True,
        )
        self._reader: threading.Thread | None = None
        if status_from_stdout:
            self._reader = threading.Thread(target=self._read_status, daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def _read_status(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                self._log.write(line)
                continue
            if data.get("final"):
                self.final = data
            self.status = data

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the process group, wait, SIGKILL if needed; return the exit status."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        self._log.close()
        return int(self.popen.returncode)

    def output(self) -> str:
        """What the process logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")
