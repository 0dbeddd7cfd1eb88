"""`lockstep doctor` end to end: the real CLI on real projects (SQLite and the real PostgreSQL), a
real repository, a real agent, and the documented exit code (0 unless a check failed)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lockstep.pipeline.snapshot import SnapshotRequest, create_snapshot, load_manifest
from lockstep.repository.gojson import format_time_ns
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, Completed, missing, require_binary, run_lockstep
from tests.deploy.conftest import _stop_everything, make_project

STATUSES = {"pass", "warn", "fail"}


def doctor_json(completed: Completed) -> dict[str, dict[str, Any]]:
    """The --json list, keyed by check name (every entry has exactly name, status, detail, fix)."""
    checks = json.loads(completed.out)
    assert isinstance(checks, list) and checks
    for check in checks:
        assert set(check) == {"name", "status", "detail", "fix"} and check["status"] in STATUSES
    return {check["name"]: check for check in checks}


@pytest.fixture
def postgresql_database() -> Iterator[str]:
    """A temporary PostgreSQL database with one table, dropped afterwards."""
    require_binary("pg_dump", "apt-get install postgresql-client")
    try:
        import psycopg

        psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5).close()
    except Exception as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")
    name = f"lockstep_doctor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname=name, autocommit=True) as connection:
            connection.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        yield name
    finally:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_all_good_project_exits_0_and_a_stopped_agent_fails_with_start_it(
    tmp_path: Path, postgresql_database: str
) -> None:
    """SQLite + PostgreSQL: with the agent down doctor exits 1 and says to start it; with it running
    and a release deployed nothing fails, the proxy serves, and the exit code is 0 (warnings allowed)."""
    project = make_project(
        tmp_path,
        extra_config=f'\n[databases.orders]\nurl = "postgresql://postgres@127.0.0.1:5432/{postgresql_database}"\n',
    )
    try:
        stopped = project.lockstep("doctor", "--json")
        assert stopped.returncode == 1, stopped.err
        checks = doctor_json(stopped)
        assert checks["agent"]["status"] == "fail"
        assert checks["agent"]["fix"].startswith("start it with `lockstep agent --env test`")
        assert checks["traffic"]["status"] == "warn"

        project.start_agent()
        deployed = project.lockstep("deploy", "-m", "first")
        assert deployed.returncode == 0, deployed.err
        # The pre-deploy snapshot could not hold main (the app creates it on its first start):
        # no snapshot holds every database until the next backup.
        first = doctor_json(project.lockstep("doctor", "--json"))["last good snapshot"]
        assert first["status"] == "fail" and "holds only orders" in first["detail"], first
        assert project.lockstep("backup").returncode == 0
        running = project.lockstep("doctor", "--json")
        assert running.returncode == 0, running.out + running.err
        checks = doctor_json(running)
        assert [name for name, check in checks.items() if check["status"] == "fail"] == []
        for name in (
            "config",
            "agent",
            "traffic",
            "proxy config",
            "repository",
            "database main",
            "database orders",
            "database orders read access",
            "database orders create database",
            "database orders pg_dump version",
            "tool git",
            "last good snapshot",
            "permissions repository",
        ):
            assert checks[name]["status"] == "pass", checks[name]
        assert str(project.listen_port) in checks["traffic"]["detail"]

        human = project.lockstep("doctor")
        assert human.returncode == 0
        assert "PASS  agent: running for environment 'test'" in human.out
        assert TEST_PASSWORD not in human.out + human.err + running.out + running.err
    finally:
        _stop_everything(project)


CONFIG = """
[repository]
url = "local:repository"

[databases.main]
url = "sqlite:///app.db"

[files]
secrets = [".env"]

[agent]
rpo_hours = 2
"""


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    """A project without code or agent: one SQLite database, a secret file at 0600, a repository."""
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "lockstep.toml").write_text(CONFIG)
    with contextlib.closing(sqlite3.connect(directory / "app.db")) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        connection.commit()
    secret = directory / ".env"
    secret.write_text("API_TOKEN=tok-never-printed-77\n")
    secret.chmod(0o600)
    completed = run_lockstep(["repo", "init"], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD}, cwd=directory)
    assert completed.returncode == 0, completed.err
    return directory


def doctor(directory: Path, password: str = TEST_PASSWORD, *extra: str) -> Completed:
    return run_lockstep(["doctor", "--json", *extra], env={"LOCKSTEP_PASSWORD": password}, cwd=directory)


def test_wrong_password_fails_and_is_never_printed(small_project: Path) -> None:
    """The repository check fails with the fix; exit 1; the given password appears nowhere."""
    wrong = "wrong-password-never-printed-51"
    completed = doctor(small_project, wrong)
    assert completed.returncode == 1
    checks = doctor_json(completed)
    repository = checks["repository"]
    assert repository["status"] == "fail" and "does not open" in repository["detail"]
    assert "LOCKSTEP_PASSWORD" in repository["fix"]
    assert wrong not in completed.out + completed.err
    assert checks["last good snapshot"]["status"] == "warn"  # not checked without the repository
    right = doctor_json(doctor(small_project))
    assert right["repository"]["status"] == "pass"


def test_secret_file_0644_fails_with_the_chmod_fix(small_project: Path) -> None:
    """A secret file readable by others fails; the fix is the exact chmod; the value is never shown."""
    secret = small_project / ".env"
    secret.chmod(0o644)
    completed = doctor(small_project)
    assert completed.returncode == 1
    check = doctor_json(completed)["permissions secret files"]
    assert check["status"] == "fail" and check["fix"] == f"chmod 600 {secret}"
    lines = run_lockstep(["doctor"], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD}, cwd=small_project)
    assert f"      fix: chmod 600 {secret}" in lines.out
    assert "tok-never-printed-77" not in completed.out + lines.out + lines.err


def snapshot_hours_ago(directory: Path, hours: float) -> Snapshot:
    """A real coordinated snapshot of the project dated `hours` ago."""
    repository = Repository.open(LocalBackend(directory / "repository"), TEST_PASSWORD)
    try:
        from lockstep.config import load_config

        config = load_config(directory / "lockstep.toml")
        when = datetime.now(UTC) - timedelta(hours=hours)
        created = create_snapshot(repository, config, SnapshotRequest(project_directory=directory), None)
        original = created.snapshot
        old = type(original)(**{**vars(original), "time": format_time_ns(int(when.timestamp() * 1e9)), "id": ""})
        repository.save_snapshot(old)
        repository.backend.remove(FileType.SNAPSHOT, original.id)
        repository.load_index()
        assert load_manifest(repository, old).databases  # a real coordinated snapshot
    finally:
        repository.close()
    return old


def test_snapshot_older_than_the_rpo_fails(small_project: Path) -> None:
    """A snapshot dated 3 hours ago with agent.rpo_hours = 2: the last good snapshot check fails."""
    old = snapshot_hours_ago(small_project, 3)
    completed = doctor(small_project)
    assert completed.returncode == 1
    check = doctor_json(completed)["last good snapshot"]
    assert check["status"] == "fail" and "older than the RPO" in check["detail"] and old.id[:8] in check["detail"]
    assert "agent.rpo_hours = 2" in check["detail"]
    backup = run_lockstep(["backup"], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD}, cwd=small_project)
    assert backup.returncode == 0, backup.err
    assert doctor_json(doctor(small_project))["last good snapshot"]["status"] == "pass"


def test_a_pre_restore_snapshot_of_one_database_is_no_recovery_point(small_project: Path) -> None:
    """Restoring one of two databases takes a pre-restore snapshot of that one only; doctor
    counted it as a good snapshot of the whole project and passed, although the newest snapshot
    holding both was older than the RPO. Now it fails and says what the newer one holds."""
    with (small_project / "lockstep.toml").open("a") as config:
        config.write('\n[databases.audit]\nurl = "sqlite:///audit.db"\n')
    with contextlib.closing(sqlite3.connect(small_project / "audit.db")) as connection:
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
        connection.commit()
    old = snapshot_hours_ago(small_project, 3)
    environment = {"LOCKSTEP_PASSWORD": TEST_PASSWORD}
    arguments = ["--json", "snapshot", "restore", old.id[:10], "--database", "main", "--yes"]
    restored = run_lockstep(arguments, env=environment, cwd=small_project)
    assert restored.returncode == 0, restored.err
    pre_restore = json.loads(restored.out)["pre_restore_snapshot"]
    check = doctor_json(doctor(small_project))["last good snapshot"]
    assert check["status"] == "fail" and old.id[:8] in check["detail"] and "older than the RPO" in check["detail"]
    assert f"newer {pre_restore[:8]} holds only main" in check["detail"], check
    backup = run_lockstep(["backup"], env=environment, cwd=small_project)
    assert backup.returncode == 0, backup.err
    assert doctor_json(doctor(small_project))["last good snapshot"]["status"] == "pass"


def test_doctor_env_counts_the_backups_cron_takes_without_env(small_project: Path) -> None:
    """`lockstep backup` (cron, or the agent's schedule) tags `default` for an environment without
    its own table; `doctor --env production` named the same environment but failed with "no
    snapshots yet" while `doctor` alone passed."""
    backup = run_lockstep(["backup"], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD}, cwd=small_project)
    assert backup.returncode == 0, backup.err
    assert doctor_json(doctor(small_project))["last good snapshot"]["status"] == "pass"
    named = doctor_json(doctor(small_project, TEST_PASSWORD, "--env", "production"))
    assert named["last good snapshot"]["status"] == "pass", named["last good snapshot"]


def test_invalid_config_is_one_failed_check(small_project: Path) -> None:
    """A config that does not load stops every other check: one fail line, exit 1."""
    (small_project / "lockstep.toml").write_text(CONFIG + "\n[repository_typo]\nurl = 'x'\n")
    completed = doctor(small_project)
    assert completed.returncode == 1
    checks = doctor_json(completed)
    assert list(checks) == ["config"] and checks["config"]["status"] == "fail"


def test_unknown_environment_name_fails(small_project: Path) -> None:
    """--env with a name that is neither under [environments] nor the default (a typo) fails the
    config check, naming the valid ones and the closest, as every other command refuses it."""
    config = small_project / "lockstep.toml"
    config.write_text(CONFIG + "\n[environments.staging.agent]\nrpo_hours = 5\n")
    completed = doctor(small_project, TEST_PASSWORD, "--env", "stagin")
    assert completed.returncode == 1
    typo = doctor_json(completed)
    assert list(typo) == ["config"] and typo["config"]["status"] == "fail"
    assert "did you mean staging?" in typo["config"]["fix"] and "production, staging" in typo["config"]["fix"]
    assert doctor_json(doctor(small_project, TEST_PASSWORD, "--env", "staging"))["config"]["status"] == "pass"


def test_disk_checks_use_the_minimum_each_command_enforces(small_project: Path) -> None:
    """A deploy refuses below deploy.min_free_disk_mb in the state directory, a backup below
    backup.min_free_disk_mb where the repository is; doctor checked the state directory against
    the backup's minimum, so it passed where the deploy then refused (and the other way round)."""
    config = small_project / "lockstep.toml"
    config.write_text(CONFIG + "\n[deploy]\nmin_free_disk_mb = 900000000\n\n[backup]\nmin_free_disk_mb = 1\n")
    checks = doctor_json(doctor(small_project))
    state, repository = checks["disk state directory"], checks["disk repository"]
    assert state["status"] == "fail" and "(900000000 MiB required)" in state["detail"], state
    assert "deploy.min_free_disk_mb" in state["fix"]
    assert repository["status"] == "pass" and "(1 MiB required)" in repository["detail"], repository
    config.write_text(CONFIG + "\n[backup]\nmin_free_disk_mb = 900000000\n")
    repository = doctor_json(doctor(small_project))["disk repository"]
    assert repository["status"] == "fail" and "backup.min_free_disk_mb" in repository["fix"]


def test_a_backup_only_project_does_not_fail_for_want_of_an_agent(small_project: Path) -> None:
    """README's snapshot workflow (cron runs `lockstep backup`, nothing is deployed) needs no agent:
    doctor failed its agent check, so it exited 1 on a healthy setup and a monitor could never
    go green. Without components, schedules or a dashboard the missing agent is a warning; with
    any of them it still fails."""
    backup = run_lockstep(["backup"], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD}, cwd=small_project)
    assert backup.returncode == 0, backup.err
    completed = doctor(small_project)
    agent = doctor_json(completed)["agent"]
    assert agent["status"] == "warn", agent
    assert "not running" in agent["detail"]
    assert completed.returncode == 0, completed.out
    config = small_project / "lockstep.toml"
    config.write_text(CONFIG + '\n[[schedules]]\njob = "backup"\ncron = "0 2 * * *"\n')
    completed = doctor(small_project)
    assert doctor_json(completed)["agent"]["status"] == "fail"
    assert completed.returncode == 1
