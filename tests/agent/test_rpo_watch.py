"""The agent's RPO watch: one alert when the newest good snapshot is too old, not one per check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lockstep.actions.environment import load_environment
from lockstep.agent.rpo_watch import RpoWatch, newest_good_snapshot_age
from lockstep.notify.events import Event
from tests.deploy.conftest import make_project


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def notify(self, event: Event) -> None:
        self.events.append(event)


def test_one_alert_per_rpo_period_and_none_when_fresh(tmp_path: Path) -> None:
    """Too old: one event, then quiet for an RPO period; fresh again: quiet and re-armed."""
    project = make_project(tmp_path, extra_config="[agent]\nrpo_hours = 2\n")
    context = load_environment(project.directory, None, None)
    ages: list[float | None] = [3.0, 3.1, 0.5, None]
    now = [0.0]
    recorder = Recorder()
    watch = RpoWatch(context, recorder, probe=lambda: ages[0], clock=lambda: now[0])  # type: ignore[arg-type]
    assert watch.check()
    assert recorder.events[0].kind == "snapshot.rpo_exceeded" and "3.0 h old" in recorder.events[0].summary
    now[0] = 600.0
    ages[0] = 3.1
    assert not watch.check()  # still too old, but already said within this RPO period
    now[0] = 2 * 3600 + 1
    assert watch.check()  # a new period: say it again
    ages[0] = 0.5
    assert not watch.check()
    ages[0] = None
    now[0] += 10
    assert watch.check() and "no good snapshot" in recorder.events[-1].summary


def test_the_age_comes_from_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh snapshot is minutes old; without any it is None."""
    project = make_project(tmp_path)
    monkeypatch.setenv("LOCKSTEP_PASSWORD", project.env["LOCKSTEP_PASSWORD"])
    context = load_environment(project.directory, None, None)
    assert newest_good_snapshot_age(context) is None
    project.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(project.database) as connection:
        connection.execute("CREATE TABLE t (x)")
    assert project.lockstep("snapshot", "create", "-m", "now").returncode == 0
    age = newest_good_snapshot_age(context)
    assert age is not None and 0 <= age < 0.1


def test_the_age_counts_this_environments_backups_and_not_another_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lockstep backup` without --env (what cron and the agent's schedules run for an environment
    without its own table) tags its snapshots `default`: they are this environment's. A staging
    backup in the same repository is not: it used to satisfy production's RPO all the same."""
    project = make_project(tmp_path, extra_config="[environments.staging.backup]\nverify_level = 'none'\n")
    monkeypatch.setenv("LOCKSTEP_PASSWORD", project.env["LOCKSTEP_PASSWORD"])
    context = load_environment(project.directory, None, None)
    project.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(project.database) as connection:
        connection.execute("CREATE TABLE t (x)")
    staging = project.lockstep("backup", "--env", "staging")
    assert staging.returncode == 0, staging.err
    assert newest_good_snapshot_age(context) is None
    scheduled = project.lockstep("backup")
    assert scheduled.returncode == 0, scheduled.err
    age = newest_good_snapshot_age(context)
    assert age is not None and 0 <= age < 0.1


def test_a_pre_restore_snapshot_of_one_database_is_not_a_backup_of_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restoring one of two databases leaves a fresh pre-restore snapshot of that one only; the
    watch took it for a backup of the environment, so an old full backup raised no alert."""
    audit = tmp_path / "audit.db"
    with sqlite3.connect(audit) as connection:
        connection.execute("CREATE TABLE events (x)")
    project = make_project(tmp_path, extra_config=f'[databases.audit]\nurl = "sqlite:///{audit}"\n')
    monkeypatch.setenv("LOCKSTEP_PASSWORD", project.env["LOCKSTEP_PASSWORD"])
    context = load_environment(project.directory, None, None)
    project.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(project.database) as connection:
        connection.execute("CREATE TABLE t (x)")
    assert project.lockstep("snapshot", "create", "-m", "both").returncode == 0
    full = newest_good_snapshot_age(context)
    assert full is not None and 0 <= full < 0.1
    restored = project.lockstep("snapshot", "restore", "latest", "--database", "audit", "--yes")
    assert restored.returncode == 0, restored.err
    assert newest_good_snapshot_age(context) is not None  # the full snapshot
    config = project.directory / "lockstep.toml"
    config.write_text(config.read_text().replace("[databases.audit]", "[databases.audit2]"))
    assert newest_good_snapshot_age(load_environment(project.directory, None, None)) is None  # none holds audit2
