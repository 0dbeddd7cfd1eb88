"""One rule for --env in every command: a name under [environments] or default_environment is
valid (the default needs no table); any other name is a usage error that lists the valid names
and suggests the closest one, so `deploy --env prodution` never creates a new environment."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, Completed, require_binary, run_lockstep

TYPO = "prodution"


class Project:
    """lockstep.toml with default_environment production (no table of its own) and
    [environments.staging], a SQLite database and an initialised repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repository = root / "repository"
        self.env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "200"}
        with sqlite3.connect(root / "app.db") as connection:
            connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        (root / "lockstep.toml").write_text(
            f'default_environment = "production"\n\n[repository]\nurl = "{self.repository}"\n\n'
            f'[databases.main]\nurl = "sqlite:///{root / "app.db"}"\n\n'
            "[backup]\nmin_free_disk_mb = 1\n\n"
            "[environments.staging.backup]\nmin_free_disk_mb = 2\n"
        )
        initialised = run_lockstep(["repo", "init", "-r", str(self.repository)], env=self.env)
        assert initialised.returncode == 0, initialised.err

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=self.env, input=b"")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


COMMANDS = [
    ("deploy", "--env", TYPO, "--yes"),
    ("status", "--env", TYPO),
    ("history", "--env", TYPO),
    ("rollback", "--env", TYPO, "--yes"),
    ("agent", "--env", TYPO, "print-systemd-unit"),
    ("lock", "status", "--env", TYPO),
    ("backup", "--env", TYPO),
    ("snapshot", "create", "--env", TYPO),
    ("snapshot", "list", "--env", TYPO),
    ("snapshot", "show", "latest", "--env", TYPO),
    ("snapshot", "verify", "latest", "--env", TYPO),
    ("snapshot", "diff", "latest", "--env", TYPO),
    ("snapshot", "restore", "latest", "--files", "restored", "--env", TYPO),
    ("snapshot", "forget", "--dry-run", "--env", TYPO),
]


@pytest.mark.parametrize("arguments", COMMANDS, ids=lambda arguments: " ".join(arguments[:3]))
def test_a_misspelt_environment_is_a_usage_error_everywhere(project: Project, arguments: tuple[str, ...]) -> None:
    """Same exit code and message in every command, naming the valid names and the closest one."""
    result = project.lockstep(*arguments)
    assert result.returncode == ExitCode.USAGE, (result.out, result.err)
    assert f"unknown environment '{TYPO}'" in result.err, result.err
    assert "did you mean production?" in result.err, result.err
    assert "production, staging" in result.err, result.err
    assert not (project.root / ".lockstep" / TYPO).exists(), "no state may be created for a typo"


def test_the_default_environment_needs_no_table(project: Project) -> None:
    """`backup`/`snapshot create`/`snapshot list --env production` work like the other commands
    do for the default environment without an [environments.production] table."""
    require_binary("sqlite3", "apt-get install sqlite3")
    backup = project.lockstep("--json", "backup", "--env", "production")
    assert backup.returncode == 0, backup.err
    created = project.lockstep("snapshot", "create", "--env", "production", "-m", "by hand")
    assert created.returncode == 0, created.err
    listed = project.lockstep("--json", "snapshot", "list", "--env", "production")
    assert listed.returncode == 0, listed.err
    assert len(json.loads(listed.out)) == 2
    assert project.lockstep("lock", "status", "--env", "production").returncode == 0
    assert project.lockstep("--json", "snapshot", "list", "--env", "staging").returncode == 0


def test_doctor_reports_a_misspelt_environment(project: Project) -> None:
    """doctor keeps its exit codes (1: a check failed) but says the same thing in its config check."""
    result = project.lockstep("--json", "doctor", "--env", TYPO)
    assert result.returncode == ExitCode.FAILED, result.err
    (check,) = json.loads(result.out)
    assert check["name"] == "config" and check["status"] == "fail"
    assert "did you mean production?" in check["fix"]


@pytest.mark.parametrize("arguments", COMMANDS, ids=lambda arguments: " ".join(arguments[:3]))
def test_the_default_label_is_refused_with_the_name_to_use(project: Project, arguments: tuple[str, ...]) -> None:
    """`snapshot list` shows "default" for what ran without --env; `--env default` is still not an
    environment here (default_environment is production), and the refusal says which name is."""
    result = project.lockstep(*["default" if argument == TYPO else argument for argument in arguments])
    assert result.returncode == ExitCode.USAGE, (result.out, result.err)
    assert "unknown environment 'default'" in result.err, result.err
    assert "did you mean production?" in result.err and "--env production" in result.err, result.err
    assert not (project.root / ".lockstep" / "default").exists(), "no state may be created for it"


def test_the_default_environment_sees_the_snapshots_taken_without_env(project: Project) -> None:
    """production has no table, so `snapshot create` without --env (tagged env:default) snapshots
    its databases: `snapshot list --env production` showed nothing although `snapshot show latest
    --env production` found that snapshot; forget --env production left it out. staging has a
    table of its own and sees none of them."""
    require_binary("sqlite3", "apt-get install sqlite3")
    created = project.lockstep("--json", "snapshot", "create", "-m", "without --env")
    assert created.returncode == 0, created.err
    snapshot_id = json.loads(created.out)["id"]

    listed = project.lockstep("--json", "snapshot", "list", "--env", "production")
    assert listed.returncode == 0, listed.err
    assert [snapshot["id"] for snapshot in json.loads(listed.out)] == [snapshot_id]
    shown = project.lockstep("--json", "snapshot", "show", "latest", "--env", "production")
    assert json.loads(shown.out)["id"] == snapshot_id
    planned = project.lockstep("--json", "snapshot", "forget", "--dry-run", "--env", "production")
    assert planned.returncode == 0, planned.err
    assert snapshot_id in planned.out

    staging = project.lockstep("--json", "snapshot", "list", "--env", "staging")
    assert staging.returncode == 0 and json.loads(staging.out) == []
    assert snapshot_id not in project.lockstep("--json", "snapshot", "forget", "--dry-run", "--env", "staging").out
