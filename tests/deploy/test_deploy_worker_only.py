"""A deploy of an app without a traffic component (workers only) runs the pre-switch check too:
nothing switches, but the retire stops the old release's workers, so a new worker that died after
its health gate must fail the deploy first. It skipped the check and reported such a release
deployed (exit 0), its worker dying and restarted over and over. A real agent and real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.conftest import _stop_everything, free_ports, make_project

pytestmark = pytest.mark.slow

WORKER_ONLY = """
default_environment = "test"

[repository]
url = "local:.lockstep/repository"

[app.components.worker]
command = "sh worker.sh"

[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 5

[deploy]
watch_seconds = 1
hooks = {{ pre-switch = "sleep 3" }}
"""

# Runs until stopped; the health gate of a component without a check waits 2 s and sees it run.
STAYS = "exec sleep 100000\n"
# Passes that gate, then dies during the pre-switch hook (the agent restarts it, to die again).
DIES_AFTER_ITS_GATE = "sleep 3.5\nexit 1\n"


def test_a_worker_only_release_whose_worker_died_after_its_gate_is_not_deployed(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (listen,) = free_ports(1)
    (project.directory / "lockstep.toml").write_text(WORKER_ONLY.format(listen=listen))
    (project.directory / "worker.sh").write_text(STAYS)
    project.commit("workers only")
    project.start_agent()
    try:
        first = project.lockstep("deploy", "--json")
        assert first.returncode == 0, first.err

        (project.directory / "worker.sh").write_text(DIES_AFTER_ITS_GATE)
        project.commit("a worker that dies")
        second = project.lockstep("deploy", "--json")
        assert second.returncode == 3, second.err
        steps = [step["step"] for step in json.loads(first.out)["steps"]]
        assert "pre-switch check" in steps, steps  # the first deploy's too, which had no old workers
        record = project.history()[-1]
        assert (record["outcome"], record["failed_step"]) == ("rolled-back", "pre-switch check"), record
        assert (
            "worker exited 1 time(s) after passing its health gate (limit 0): exited with code 1" in (record["reason"])
        ), record["reason"]
        # Nothing was said deployed. (Without a traffic component the agent never has an active
        # slot, so every deploy starts in blue, stopping the old workers first: there is no old
        # release left to serve on, whatever the exit code says. Not this test's business.)
        assert [item for item in project.status()["slots"]["blue"]["processes"] if item["running"]] == []
    finally:
        _stop_everything(project)
