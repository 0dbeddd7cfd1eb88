"""Deploy hooks that fail, and what the notification channels hear when a rollback fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import NotesProject, _stop_everything, deploy_three_releases, make_project

pytestmark = pytest.mark.slow


@pytest.fixture
def gated_project(tmp_path: Path) -> Iterator[NotesProject]:
    """The notes app whose pre-deploy hook refuses while a `freeze` file exists, and whose
    pre-switch hook fails while a `no-switch` file does."""
    freeze, no_switch = tmp_path / "freeze", tmp_path / "no-switch"
    project = make_project(
        tmp_path,
        extra_deploy=(
            f"hooks = {{ pre-deploy = \"sh -c 'echo deploys are frozen; test ! -e {freeze}'\", "
            f"pre-switch = \"sh -c 'test ! -e {no_switch}'\" }}"
        ),
    )
    project.start_agent()
    try:
        yield project
    finally:
        _stop_everything(project)


def test_a_failing_pre_deploy_hook_refuses_the_deploy_and_says_what_serves(
    gated_project: NotesProject, tmp_path: Path
) -> None:
    """The hook said no before anything changed, yet the deploy exited 3 ("failed and rolled
    back"), was recorded as rolled back at no step, and said "nothing was serving before" while
    1.0.0 served. It is a refusal now: exit 2, outcome failed at the pre-deploy hook."""
    project = gated_project
    assert project.lockstep("deploy").returncode == 0
    (tmp_path / "freeze").touch()
    (project.directory / "VERSION").write_text("1.0.1\n")
    project.commit("notes 1.0.1")
    refused = project.lockstep("deploy", "--json")
    assert refused.returncode == 2, refused.err
    assert "nothing was serving before" not in refused.err
    assert "refused by its pre-deploy hook" in refused.err and "deploys are frozen" in refused.err
    record = json.loads(refused.out)
    assert (record["outcome"], record["failed_step"]) == ("failed", "pre-deploy hook"), record
    assert project.history()[-1]["outcome"] == "failed"
    assert project.version() == "1.0.0"
    assert not (project.directory / ".lockstep" / "state" / "test" / "releases" / record["id"]).exists()

    (tmp_path / "freeze").unlink()
    assert project.lockstep("deploy").returncode == 0
    assert project.version() == "1.0.1"


def test_a_failing_pre_switch_hook_rolls_back_and_names_its_step(gated_project: NotesProject, tmp_path: Path) -> None:
    """The pre-switch hook failed: rolled back (exit 3) as before, and the history names the hook."""
    project = gated_project
    assert project.lockstep("deploy").returncode == 0
    (tmp_path / "no-switch").touch()
    (project.directory / "VERSION").write_text("1.0.1\n")
    project.commit("notes 1.0.1")
    failed = project.lockstep("deploy", "--json")
    assert failed.returncode == 3, failed.err
    record = json.loads(failed.out)
    assert (record["outcome"], record["failed_step"]) == ("rolled-back", "pre-switch hook"), record
    assert project.version() == "1.0.0"
    assert not [item for item in project.status()["slots"]["green"]["processes"] if item["running"]]


def test_a_failed_rollback_is_notified(tmp_path: Path) -> None:
    """A rollback that failed (its release would not start) and was undone told no channel: only
    a successful one sent rollback.done. It now sends rollback.failed, an error-level event."""
    event_log = tmp_path / "events.jsonl"
    project = make_project(
        tmp_path, extra_config=f'[[notifications.channels]]\nkind = "event-log"\npath = "{event_log}"\n'
    )
    project.start_agent()
    try:
        ids = deploy_three_releases(project)
        # 1.0.1's release directory is damaged: its web process exits at once.
        release = project.directory / ".lockstep" / "state" / "test" / "releases" / ids[0]
        (release / "app.py").write_text("raise SystemExit('damaged release')\n")
        failed = project.lockstep("rollback", "--to", ids[0], "--json")
        assert failed.returncode == 3, failed.err
        assert project.version() == "1.0.3"
    finally:
        _stop_everything(project)
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    failures = [event for event in events if event["kind"] == "rollback.failed"]
    assert len(failures) == 1, [event["kind"] for event in events]
    assert failures[0]["severity"] == "error" and ids[0] in failures[0]["summary"], failures[0]


def test_a_hanging_hook_is_stopped_at_hook_timeout_and_frees_the_lock(tmp_path: Path) -> None:
    """Hooks had a fixed 10 minutes, and a hanging one held the environment's lock that long.
    `hook_timeout` bounds it; the hook counts as failed and the next deploy can run."""
    slow = tmp_path / "slow"
    project = make_project(
        tmp_path,
        extra_deploy=f"hook_timeout = 1\nhooks = {{ pre-deploy = \"sh -c 'test ! -e {slow} || sleep 120'\" }}",
    )
    project.start_agent()
    try:
        slow.touch()
        started = time.monotonic()
        refused = project.lockstep("deploy")
        assert refused.returncode == 2, refused.err
        assert "did not finish within 1 s" in refused.err
        assert time.monotonic() - started < 60
        slow.unlink()
        deployed = project.lockstep("deploy")
        assert deployed.returncode == 0, deployed.err
        assert project.version() == "1.0.0"
    finally:
        _stop_everything(project)


def test_a_deploy_interrupted_in_its_post_deploy_hook_stays_deployed(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) while the post-deploy hook ran, after the deploy had succeeded and its
    old slot was retired: the unwind still had the start and migrate undos, so it stopped the slot
    that had the traffic, restored the pre-deploy data (losing what was written since the
    snapshot) and deleted the serving release's directory. A finished deploy is past undoing."""
    import os
    import signal

    armed, started = tmp_path / "armed", tmp_path / "hook-started"
    hook = f"sh -c 'test -e {armed} || exit 0; touch {started}; sleep 60'"
    project = make_project(tmp_path, extra_deploy=f'hooks = {{ post-deploy = "{hook}" }}')
    project.start_agent()
    try:
        assert project.lockstep("deploy").returncode == 0
        armed.touch()
        project.add_note("written under v1")
        project.apply("v2", "notes 2.0.0")  # migration 002
        deploy = project.popen_lockstep("deploy", "--json")
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the post-deploy hook did not start"
        project.add_note("written after the deploy succeeded")
        os.kill(deploy.pid, signal.SIGTERM)
        _, err = deploy.communicate(timeout=120)
        said = err.decode()
        assert project.version() == "2.0.0", said
        notes = project.notes()
        assert "written after the deploy succeeded" in notes and "written under v1" in notes
        record = project.history()[-1]
        assert record["outcome"] == "succeeded", record
        assert "undo" not in " ".join(step["step"] for step in record["steps"]), record["steps"]
        releases = project.directory / ".lockstep" / "state" / "test" / "releases"
        assert (releases / record["release_id"]).is_dir()
        assert "it stays deployed" in said, said
        assert deploy.returncode == 0, said
    finally:
        _stop_everything(project)
