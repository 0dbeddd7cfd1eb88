"""An app without a traffic component (workers only) deploys blue-green like a web app, minus the
traffic: the new release starts in the other slot beside the old one, passes its health gate and
the pre-switch check, becomes the active slot (no proxy involved), then the old slot's workers stop.

Before, the agent only made a slot with a port active: every deploy started in blue, stopping the
old release's workers first, so a failed deploy left nothing running while it said "rolled back",
and `lockstep rollback` found nothing deployed. A real agent and real processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import NotesProject, _stop_everything, clean_up_said, free_ports, make_project

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
            "worker exited 1 time(s) since its health gate began (limit 0): exited with code 1" in (record["reason"])
        ), record["reason"]
        # Nothing was said deployed: the new release is gone, the first one's worker runs on.
        status = project.status()
        assert status["active_slot"] == "blue", status
        assert _running(status, "green") == [], status
        assert [item["release"] for item in _running(status, "blue")] == [project.history()[0]["release_id"]]
    finally:
        _stop_everything(project)


def _running(status: dict[str, Any], slot: str) -> list[dict[str, Any]]:
    return [item for item in status["slots"][slot]["processes"] if item["running"]]


def _start_worker_only(project: NotesProject) -> None:
    (listen,) = free_ports(1)
    (project.directory / "lockstep.toml").write_text(WORKER_ONLY.format(listen=listen))
    (project.directory / "worker.sh").write_text(STAYS)
    project.commit("workers only")
    project.start_agent()


def _deploy_twice(project: NotesProject) -> tuple[str, str, dict[str, str]]:
    """Two worker-only releases deployed; returns their release ids, oldest first, and the second
    deploy's steps."""
    first = project.lockstep("deploy", "--json")
    assert first.returncode == 0, first.err
    (project.directory / "worker.sh").write_text("# second\n" + STAYS)
    project.commit("the second release")
    second = project.lockstep("deploy", "--json")
    assert second.returncode == 0, second.err
    steps = {step["step"]: step["detail"] for step in json.loads(second.out)["steps"]}
    releases = [record["release_id"] for record in project.history() if record["outcome"] == "succeeded"]
    return releases[0], releases[1], steps


def _running_anywhere(status: dict[str, Any]) -> list[dict[str, Any]]:
    return _running(status, "blue") + _running(status, "green")


def test_a_failed_worker_only_deploy_leaves_the_previous_release_running(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    _start_worker_only(project)
    try:
        first_release, second_release, steps = _deploy_twice(project)
        (worker,) = _running_anywhere(project.status())
        assert worker["release"] == second_release, worker
        # A new agent adopts the active slot of workers only as it is (no proxy to start for it).
        assert project.agent is not None
        project.agent.send_signal(signal.SIGTERM)
        project.agent.wait(timeout=60)
        project.start_agent()
        assert _running_anywhere(project.status()) == [worker]

        (project.directory / "worker.sh").write_text(DIES_AFTER_ITS_GATE)
        project.commit("a worker that dies")
        third = project.lockstep("deploy", "--json")
        assert third.returncode == 3, third.err
        record = project.history()[-1]
        assert (record["outcome"], record["failed_step"]) == ("rolled-back", "pre-switch check"), record

        # "rolled back" is true: the second release's worker is the very process that ran before.
        after = project.status()
        assert _running_anywhere(after) == [worker], after
        # Blue-green: the second release started beside the first, in green, became the active
        # slot, then blue stopped; the third started in blue and was stopped there.
        assert after["active_slot"] == "green", after
        assert _running(after, "green") == [worker], after
        assert steps["switch"] == "slot green active, no traffic to move", steps
        assert first_release != second_release
    finally:
        _stop_everything(project)


def test_rollback_of_a_worker_only_app_brings_back_the_previous_release(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    _start_worker_only(project)
    try:
        first_release, second_release, _ = _deploy_twice(project)
        (second_worker,) = _running_anywhere(project.status())
        planned = project.lockstep("rollback", "--dry-run", "--json")
        assert planned.returncode == 0, planned.err
        assert (
            "slot blue becomes the active one (workers only: no traffic to switch)" in json.loads(planned.out)["steps"]
        )

        rolled_back = project.lockstep("rollback", "--json")
        assert rolled_back.returncode == 0, rolled_back.err + rolled_back.out

        status = project.status()
        assert status["active_slot"] == "blue", status
        (worker,) = _running(status, "blue")
        assert worker["release"] == first_release, worker
        # The newer release's worker stopped: two versions of a worker do not run on.
        assert _running(status, "green") == [], status
        assert not _pid_runs(int(second_worker["pid"]))
        assert project.history()[-1]["outcome"] == "succeeded"
        assert second_release != first_release
    finally:
        _stop_everything(project)


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_dry_run_of_a_worker_only_deploy_promises_no_error_rate_or_drain(tmp_path: Path) -> None:
    """The plan promises the watch a workers-only deploy runs, without an error rate (no requests
    reach a worker); and no "after draining" for a slot whose every process stops."""
    project = make_project(tmp_path)
    (listen,) = free_ports(1)
    (project.directory / "lockstep.toml").write_text(WORKER_ONLY.format(listen=listen))
    (project.directory / "worker.sh").write_text(STAYS)
    project.commit("workers only")
    planned = project.lockstep("deploy", "--dry-run")
    assert planned.returncode == 0, planned.err
    assert (
        "9. watch 1 s: 3 failed checks, more than 0 exits or a crash loop roll back (workers only: no error rate)"
        in planned.out
    ), planned.out
    assert "errors roll back" not in planned.out and "after draining" not in planned.out, planned.out
    assert "stop all of it (workers only: nothing kept warm)" in planned.out, planned.out


# A workers-only app with a watch window long enough for a worker to die in it, and no pre-switch
# hook: the health gate (2 s for a component without a check) and the pre-switch check pass first.
WATCHED = """
default_environment = "test"

[repository]
url = "local:.lockstep/repository"

[app.components.worker]
command = "sh worker.sh"
{health}
[traffic]
listen = "127.0.0.1:{listen}"
drain_timeout = 5

[deploy]
watch_seconds = 9
watch_failures = 2
"""

# Passes its gate (2 s) and the pre-switch check, then dies in the watch window.
DIES_IN_THE_WATCH = "sleep 5\nexit 1\n"


def _watched_project(tmp_path: Path, health: str = "") -> NotesProject:
    project = make_project(tmp_path)
    (listen,) = free_ports(1)
    (project.directory / "lockstep.toml").write_text(WATCHED.format(listen=listen, health=health))
    (project.directory / "worker.sh").write_text(STAYS)
    project.commit("workers only, watched")
    project.start_agent()
    return project


def _deploy_failing_in_the_watch(project: NotesProject, worker: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first release deployed and watched, then one whose `worker` script fails the watch;
    returns the running worker of the first release and the failed deploy's record."""
    first = project.lockstep("deploy", "--json")
    assert first.returncode == 0, first.err
    steps = {step["step"]: step["detail"] for step in json.loads(first.out)["steps"]}
    # Watched too, without requests to count: no proxy serves a worker.
    assert steps["watch"].endswith("of checks passed (workers only: no requests to count)"), steps
    (old_worker,) = _running_anywhere(project.status())

    (project.directory / "worker.sh").write_text(worker)
    project.commit("a worker that fails in the watch window")
    second = project.lockstep("deploy", "--json")
    assert second.returncode == 3, second.err  # rolled back, as a web app's failed watch
    record = project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("rolled-back", "watch"), record
    steps_run = [step["step"] for step in record["steps"]]
    assert steps_run.index("pre-switch check") < steps_run.index("switch") < steps_run.index("watch"), steps_run
    assert "retire" not in steps_run or record["steps"][steps_run.index("retire")]["outcome"] != "ok", record
    return old_worker, record


def _assert_the_first_release_runs_on(project: NotesProject, old_worker: dict[str, Any]) -> None:
    """The old slot is the active one again, its worker the very process that ran before, and
    nothing of the new release runs."""
    status = project.status()
    assert status["active_slot"] == "blue", status
    assert _running_anywhere(status) == [old_worker], status
    assert _pid_runs(int(old_worker["pid"]))
    assert status["last_operation"]["outcome"] == "rolled-back", status["last_operation"]
    said = project.lockstep("status")
    assert said.returncode == 0, said.err
    assert "rolled-back at watch" in said.out, said.out


def test_a_worker_that_dies_in_the_watch_window_rolls_back_to_the_old_workers(tmp_path: Path) -> None:
    """Without a watch, a worker that died seconds after the switch was reported deployed, and
    the retire had already stopped the old release's workers."""
    project = _watched_project(tmp_path)
    try:
        old_worker, record = _deploy_failing_in_the_watch(project, DIES_IN_THE_WATCH)
        assert "worker exited 1 time(s) in the watch window (limit 0): exited with code 1" in record["reason"], record
        _assert_the_first_release_runs_on(project, old_worker)
    finally:
        _stop_everything(project)


def test_a_worker_whose_health_check_fails_in_the_watch_window_rolls_back(tmp_path: Path) -> None:
    """A worker's command health check runs in the watch too: this one runs on, but turns sick."""
    health = 'health = { command = "test ! -e sick", interval = 0.2, passes = 1, start_timeout = 10 }\n'
    project = _watched_project(tmp_path, health)
    try:
        old_worker, record = _deploy_failing_in_the_watch(project, "sleep 5\ntouch sick\n" + STAYS)
        assert "worker failed 2 health checks in a row in the watch window" in record["reason"], record
        _assert_the_first_release_runs_on(project, old_worker)
    finally:
        _stop_everything(project)


def test_a_first_worker_only_deploy_that_fails_its_watch_leaves_nothing_active(tmp_path: Path) -> None:
    """No earlier release to switch back to: the undo of the switch withdraws the active slot,
    and `status` says again what it says of an app never deployed (no proxy to start)."""
    project = make_project(tmp_path)
    (listen,) = free_ports(1)
    (project.directory / "lockstep.toml").write_text(WATCHED.format(listen=listen, health=""))
    (project.directory / "worker.sh").write_text(DIES_IN_THE_WATCH)
    project.commit("a first worker that dies in the watch window")
    project.start_agent()
    try:
        fresh = project.lockstep("status")
        assert fresh.returncode == 0, fresh.err
        assert "no component has a port (workers only), so no deploy starts it" in fresh.out, fresh.out
        assert "the first deploy starts it" not in fresh.out, fresh.out

        deployed = project.lockstep("deploy", "--json")
        assert deployed.returncode == 3, deployed.err
        record = project.history()[-1]
        assert (record["outcome"], record["failed_step"]) == ("rolled-back", "watch"), record
        status = project.status()
        assert status["active_slot"] is None, status
        assert _running_anywhere(status) == [], status
        after = project.lockstep("status")
        assert "nothing deployed yet" in after.out and "no deploy starts it" in after.out, after.out
    finally:
        _stop_everything(project)


def test_a_worker_only_deploy_killed_in_its_watch_keeps_one_release_of_workers(tmp_path: Path) -> None:
    """Killed in the watch, after the switch: the clean-up stops the old slot's workers, as the
    retire would have, and says the new slot is the active one, not that it "has the traffic"."""
    project = _watched_project(tmp_path)
    try:
        assert project.lockstep("deploy").returncode == 0
        (project.directory / "worker.sh").write_text("# second\n" + STAYS)
        project.commit("the second release")
        deploy = project.deploy_until_step("watch")
        time.sleep(0.5)
        os.kill(deploy.pid, signal.SIGKILL)
        deploy.wait()
        assert deploy.stderr is not None and deploy.stdout is not None
        deploy.stderr.close()
        deploy.stdout.close()

        said = clean_up_said(project)
        assert "is the active one (workers only), without a finished watch window" in said, said
        assert "has the traffic" not in said, said
        assert "stopped worker in slot blue: the active release (workers only) runs its own" in said, said
        record = project.history()[-1]
        assert (record["outcome"], record["failed_step"]) == ("interrupted", "watch"), record
        after = project.status()
        assert after["active_slot"] == "green", after
        assert _running(after, "blue") == [] and len(_running(after, "green")) == 1, after
    finally:
        _stop_everything(project)


def test_status_of_a_worker_only_app_offers_no_url(tmp_path: Path) -> None:
    """`lockstep status` began with the proxy's http://…/ address, where nothing answers for an
    app without ports; --json says the same with a null url."""
    project = make_project(tmp_path)
    _start_worker_only(project)
    try:
        before = project.lockstep("status")
        assert before.returncode == 0, before.err
        assert before.out.splitlines()[0] == "environment test: workers only, no URL (no component has a port)"
        assert project.lockstep("deploy").returncode == 0
        deployed = project.lockstep("status")
        assert deployed.returncode == 0, deployed.err
        assert deployed.out.splitlines()[0] == "environment test: workers only, no URL (no component has a port)"
        assert "http://" not in deployed.out, deployed.out
        document = project.status()
        assert (document["url"], document["workers_only"]) == (None, True), document
    finally:
        _stop_everything(project)


def test_status_of_an_app_with_a_port_names_its_url(notes_project: NotesProject) -> None:
    listen = notes_project.listen_port
    completed = notes_project.lockstep("status")
    assert completed.returncode == 0, completed.err
    assert completed.out.splitlines()[0] == f"environment test: http://127.0.0.1:{listen}/"
    document = notes_project.status()
    assert (document["url"], document["workers_only"]) == (f"http://127.0.0.1:{listen}/", False), document
