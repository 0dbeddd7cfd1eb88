"""The watch window counts exits of the new release: a release that crashes once a few seconds
after its health gate passed, restarted by the agent and healthy after, rolls back under the
default `[deploy] watch_max_exits = 0` and passes with `watch_max_exits = 1`. The notes app, a
real agent, the built-in proxy and real processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import NotesProject, _stop_everything, make_project
from tests.deploy.test_rollback_pre_switch import EXITS_ONCE_WHEN_ASKED

pytestmark = pytest.mark.slow

# Appended to notes.py: once per shared directory, EXIT_AFTER seconds after it starts serving,
# the release exits 1 (the agent restarts it, and the restarted process serves on).
EXITS_ONCE = '''

EXIT_AFTER = 4.0


def after_start(database: Path, stopping: threading.Event) -> None:
    """1.1.0 exits once, EXIT_AFTER seconds after start (its health gate has passed by then)."""
    import os
    import sys

    marker = database.parent / "exited-once"
    if marker.exists() or stopping.wait(EXIT_AFTER):
        return
    marker.write_text("")
    print("notes: exiting once, on purpose", file=sys.stderr, flush=True)
    os._exit(1)
'''


def deploy_v1_then_the_release_that_exits_once(project: NotesProject) -> tuple[int, str, str]:
    """1.0.0 deployed, then 1.1.0 (which exits once) deployed: (exit code, stderr, reason). No load:
    the requests failing while it restarts would fail the watch's error rate, not its exit count."""
    assert project.lockstep("deploy").returncode == 0
    with (project.directory / "notes.py").open("a") as notes:
        notes.write(EXITS_ONCE)
    (project.directory / "VERSION").write_text("1.1.0\n")
    project.commit("notes 1.1.0: exits once")
    completed = project.lockstep("deploy", "--json")
    record = json.loads(completed.out)
    assert (project.directory / ".lockstep" / "state" / "test" / "shared" / "exited-once").exists()
    return completed.returncode, completed.err, str(record.get("reason") or "")


def test_one_exit_in_the_watch_window_rolls_back_by_default(tmp_path: Path) -> None:
    project = make_project(tmp_path, watch_seconds=10.0)
    project.start_agent()
    try:
        code, err, reason = deploy_v1_then_the_release_that_exits_once(project)
        assert code == 3, err
        # In the watch, or (on a slow machine, the switch late) after the health gate, before it.
        window = "in the watch window" if "in the watch window" in reason else "since its health gate began"
        assert f"web exited 1 time(s) {window} (limit 0): exited with code 1; the last line of " in reason
        assert reason.endswith("web.log: notes: exiting once, on purpose"), reason
        assert f"web exited 1 time(s) {window} (limit 0)" in err
        step = "watch" if window == "in the watch window" else "pre-switch check"
        assert project.history()[-1]["failed_step"] == step
        assert project.version() == "1.0.0"
    finally:
        _stop_everything(project)


def test_watch_max_exits_allows_that_many(tmp_path: Path) -> None:
    project = make_project(tmp_path, watch_seconds=10.0, extra_deploy="watch_max_exits = 1")
    project.start_agent()
    try:
        code, err, _ = deploy_v1_then_the_release_that_exits_once(project)
        assert code == 0, err
        window = "in the watch window" if "in the watch window" in err else "since its health gate began"
        assert f"web exited 1 time(s) {window} (limit 1): exited with code 1" in err
        watch = next(step for step in project.history()[-1]["steps"] if step["step"] == "watch")
        assert "1 exit(s) within the limit of 1" in watch["detail"]
        assert project.version() == "1.1.0"
    finally:
        _stop_everything(project)


def test_exits_lockstep_causes_do_not_count(tmp_path: Path) -> None:
    """Three deploys under the default limit of 0: each stops processes (the release warm in the
    slot it starts in, the old slot's worker when retiring), none of which counts as an exit."""
    project = make_project(tmp_path, watch_seconds=2.0)
    project.start_agent()
    try:
        for version in ("1.0.1", "1.0.2", "1.0.3"):
            (project.directory / "VERSION").write_text(version + "\n")
            project.commit(f"notes {version}")
            completed = project.lockstep("deploy")
            assert completed.returncode == 0, completed.err
            assert "exited" not in completed.err
        assert project.version() == "1.0.3"
    finally:
        _stop_everything(project)


def test_a_release_that_exits_between_its_health_gate_and_the_switch_gets_no_traffic(tmp_path: Path) -> None:
    """The new web process dies (kill -9) while the pre-switch hook runs, after its health gate:
    the agent restarts it, but the watch counted exits only from its own start, after the switch,
    so the exit went unseen and traffic went to a release that had just crashed (or to a dead one,
    had the restart failed). Exits now count from the health gate, and a check right before the
    switch fails the deploy and rolls it back (exit 3) with traffic never moved."""
    go = tmp_path / "go"  # the pre-switch hook waits for it
    hook = f"sh -c 'while ! test -e {go}; do sleep 0.1; done'"
    project = make_project(tmp_path, watch_seconds=2.0, extra_deploy=f'hooks = {{ pre-switch = "{hook}" }}')
    project.start_agent()
    try:
        go.write_text("")
        assert project.lockstep("deploy").returncode == 0
        go.unlink()
        (project.directory / "VERSION").write_text("1.0.1\n")
        project.commit("notes 1.0.1")
        deploy = project.deploy_until_step("pre-switch hook")
        web = next(item for item in project.status()["slots"]["green"]["processes"] if item["component"] == "web")
        os.killpg(web["pid"], signal.SIGKILL)
        time.sleep(2.0)  # the agent restarts it after 1 s: running again at the switch
        go.write_text("")
        _, rest = deploy.communicate(timeout=300)
        assert deploy.returncode == 3, rest.decode()
        record = project.history()[-1]
        assert (record["outcome"], record["failed_step"]) == ("rolled-back", "pre-switch check"), record
        assert "web exited 1 time(s) since its health gate began (limit 0): killed by signal" in record["reason"]
        assert "switch" not in [step["step"] for step in record["steps"]], record["steps"]
        assert project.version() == "1.0.0"
        assert [item for item in project.status()["slots"]["green"]["processes"] if item["running"]] == []
    finally:
        _stop_everything(project)


def test_a_web_that_exits_while_the_workers_gate_runs_gets_no_traffic(notes_project: NotesProject) -> None:
    """The health gate checks web, then the worker (2 s). The new web exits once after its own gate
    passed, while the worker's runs; the agent restarts it. Exits counted only from the end of the
    whole gate, so the deploy switched to it and succeeded; they count from its start now."""
    assert notes_project.lockstep("deploy").returncode == 0
    with (notes_project.directory / "notes.py").open("a") as notes:
        notes.write(EXITS_ONCE_WHEN_ASKED)
    (notes_project.directory / "VERSION").write_text("1.0.1\n")
    notes_project.commit("notes 1.0.1: exits once when asked")
    marker = notes_project.database.parent / "exit-once"
    marker.write_text("")
    completed = notes_project.lockstep("deploy")
    assert not marker.exists()  # the new web did exit
    assert completed.returncode == 3, completed.err
    record = notes_project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("rolled-back", "pre-switch check"), record
    assert "web exited 1 time(s) since its health gate began (limit 0): exited with code 1" in record["reason"]
    assert notes_project.version() == "1.0.0"
