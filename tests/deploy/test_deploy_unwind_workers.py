"""A deploy that fails after its migrations ran restores the data: the old release's workers,
which run beside the new release all through a deploy and take no requests (so the traffic hold
does not stop them), must not write while it does. A real agent, real worker processes and the
SQLite database they write to; the deploy waits inside its restore (a fault-injection wait
point) for as long as the test needs to see that nothing writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from tests.deploy.conftest import _stop_everything, free_ports, make_project
from tests.deploy.writing_workers import (
    commit_a_release_that_fails_smoke,
    deploy_a_writing_release,
    jobs_component,
    lost_writes,
    wait_for_file,
    wait_for_writes,
    writes_between,
)

pytestmark = pytest.mark.slow


def test_the_old_release_s_workers_do_not_write_while_a_failed_deploy_restores_the_data(tmp_path: Path) -> None:
    log = tmp_path / "jobs.log"
    project = make_project(
        tmp_path,
        extra_deploy='smoke = [{ command = "test ! -e BREAKS_SMOKE" }]',
        extra_config=jobs_component("solo", log),
    )
    project.start_agent()
    try:
        _check_the_unwind(project, log, {"web", "worker", "jobs"})
    finally:
        _stop_everything(project)


WORKERS_ONLY = """
default_environment = "test"

[repository]
url = "local:.lockstep/repository"

[databases.main]
url = "sqlite:///.lockstep/state/test/shared/notes.db"

[app]
migrate = "python3 migrate.py"
env = {{ NOTES_DATABASE = "{{shared}}/notes.db" }}

{jobs}
[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 5

[deploy]
watch_seconds = 1
smoke = [{{ command = "test ! -e BREAKS_SMOKE" }}]

[policy]
data_rollback = "auto"
"""


def test_an_app_of_workers_only_restores_with_its_old_workers_stopped(tmp_path: Path) -> None:
    """No traffic to hold at all: stopping the old workers is all that keeps the data still."""
    log = tmp_path / "jobs.log"
    project = make_project(tmp_path)
    (listen,) = free_ports(1)
    config = WORKERS_ONLY.format(jobs=jobs_component("solo", log), listen=listen)
    (project.directory / "lockstep.toml").write_text(config)
    project.start_agent()
    try:
        _check_the_unwind(project, log, {"jobs"})
    finally:
        _stop_everything(project)


def _check_the_unwind(project: Any, log: Path, components: set[str]) -> None:
    deploy_a_writing_release(project, log)

    commit_a_release_that_fails_smoke(project)
    go = project.directory.parent / "restore-go"
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "deploy", "--json"],
        cwd=project.directory,
        env={**os.environ, **project.env, WAIT_AT_VARIABLE: "restore data", WAIT_FOR_VARIABLE: str(go)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(go.with_name(go.name + WAITING_SUFFIX), process)  # in the restore, before it changes a thing
        window_start = time.time()
        time.sleep(2)  # 40 writes' worth
        window_end = time.time()
        go.touch()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    written = writes_between(log, "1.0.0", window_start, window_end)
    assert written == [], f"{len(written)} writes of the old release's workers during the data restore"
    assert process.returncode == 3, err + out
    document = json.loads(out)
    assert document["failed_step"] == "smoke" and document["data_restored"] is True, document
    workers = ", ".join(sorted(components - {"web"}))
    assert f"stopped the workers of slot blue for the data restore: {workers}" in err, err
    assert f"started the workers of slot blue again: {workers}" in err, err
    ended = time.time()
    wait_for_writes(log, "solo", "1.0.0", after=ended)  # they run again, on the restored data
    assert lost_writes(log, "1.0.0", window_start, project.database) == []
    status = project.status()
    assert status["active_slot"] == "blue"
    running = {item["component"] for item in status["slots"]["blue"]["processes"] if item["running"]}
    assert running == components
