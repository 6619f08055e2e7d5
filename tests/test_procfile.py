"""The Procfile runs the example worker and the tracker together under honcho."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from examples import ingest
from tests.helpers import BIN, fetch_all, running, wait_for

pytestmark = pytest.mark.e2e


def test_honcho_runs_worker_and_tracker(
    service_env: dict[str, str], redis_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    env = dict(service_env, PATH=f"{BIN}{os.pathsep}{service_env.get('PATH', '')}")
    with running([str(BIN / "honcho"), "start"], env, tmp_path / "honcho.log") as honcho:
        wait_for(lambda: "consuming" in honcho.output() and "ready" in honcho.output(), 60,
                 what="worker and tracker up")  # fmt: skip
        ingest.app.conf.broker_url = redis_url
        result = ingest.fetch_remote.delay("https://example.invalid/p", fail_times=0)
        rows = wait_for(lambda: fetch_all(engine, "SELECT status FROM jobs WHERE id = :id "
                                          "AND status = 'FINISHED'", id=result.id), 30)  # fmt: skip
        assert rows == [{"status": "FINISHED"}]
        honcho.popen.terminate()  # honcho forwards SIGTERM to both processes
        honcho.popen.wait(30)
        assert '"listen_stopped"' in honcho.output()
        assert "tracker.1 stopped (rc=0)" in honcho.output(), honcho.output()
