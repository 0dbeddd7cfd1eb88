"""Without --env every command works on default_environment, as deploy does: when it has an
[environments.NAME] table of its own, `snapshot create`, `backup`, `restore` and the other
snapshot commands use its overrides and its label, not the top-level config (here a development
database that `lockstep backup` from cron used to save instead of production's)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_PASSWORD, Completed, require_binary, run_lockstep

DEVELOPMENT_ROWS = 1
PRODUCTION_ROWS = 3


class Project:
    """Top-level [databases.main] is dev.db; [environments.production.databases.main] is prod.db,
    and production is default_environment (the default)."""

    def __init__(self, root: Path) -> None:
        require_binary("sqlite3", "apt-get install sqlite3")
        self.root = root
        self.repository = root / "repository"
        self.env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "200"}
        self.development = root / "dev.db"
        self.production = root / "prod.db"
        for path, rows in ((self.development, DEVELOPMENT_ROWS), (self.production, PRODUCTION_ROWS)):
            with sqlite3.connect(path) as connection:
                connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
                connection.executemany("INSERT INTO orders (total) VALUES (?)", [(1.0,)] * rows)
        self.write_config(production_table=True)
        initialised = run_lockstep(["repo", "init", "-r", str(self.repository)], env=self.env)
        assert initialised.returncode == 0, initialised.err

    def write_config(self, production_table: bool) -> None:
        text = (
            f'[repository]\nurl = "{self.repository}"\n\n'
            f'[databases.main]\nurl = "sqlite:///{self.development}"\n\n'
            '[backup]\nmin_free_disk_mb = 1\nverify_level = "none"\n'
        )
        if production_table:
            text += f'\n[environments.production.databases.main]\nurl = "sqlite:///{self.production}"\n'
        (self.root / "lockstep.toml").write_text(text)

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=self.env, input=b"")

    def json(self, *arguments: str) -> Any:
        result = self.lockstep("--json", *arguments)
        assert result.returncode == 0, (result.out, result.err)
        return json.loads(result.out)


def rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute("SELECT count(*) FROM orders").fetchone()
    return int(count)


def saved_rows(manifest: dict[str, Any]) -> int:
    (table,) = manifest["databases"]["main"]["tables"]
    return int(table["rows"])


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_snapshot_create_without_env_saves_the_default_environments_database(project: Project) -> None:
    created = project.json("snapshot", "create", "-m", "no --env")
    assert created["environment"] == "production"
    assert saved_rows(created) == PRODUCTION_ROWS, "the top-level (development) database was saved"
    listed = project.json("snapshot", "list", "--env", "production")
    assert [snapshot["id"] for snapshot in listed] == [created["id"]]

    shown = project.lockstep("snapshot", "create", "-m", "again")
    assert shown.returncode == 0, shown.err
    assert shown.out.startswith("snapshot ") and " of environment production saved" in shown.out, shown.out


def test_backup_without_env_saves_the_default_environment_and_says_so(project: Project) -> None:
    backup = project.json("backup")
    assert backup["environment"] == "production"
    manifest = project.json("snapshot", "show", backup["snapshot_id"])
    assert manifest["environment"] == "production" and saved_rows(manifest) == PRODUCTION_ROWS

    line = project.lockstep("backup")
    assert line.returncode == 0, line.err
    assert line.out.startswith("backup ok: snapshot ") and " of environment production, " in line.out, line.out


def test_restore_without_env_writes_into_the_default_environments_database(project: Project) -> None:
    snapshot_id = project.json("snapshot", "create", "-m", "before the mistake")["id"]
    with sqlite3.connect(project.production) as connection:
        connection.execute("DELETE FROM orders")
    with sqlite3.connect(project.development) as connection:
        connection.execute("INSERT INTO orders (total) VALUES (2.0)")

    diff = project.json("snapshot", "diff", "latest")  # compares production's live database
    (table,) = diff["databases"][0]["tables"]
    assert (table["table"], table["rows_removed"], table["rows_added"]) == ("orders", PRODUCTION_ROWS, 0)

    restored = project.lockstep("snapshot", "restore", "latest", "--database", "main", "--yes")
    assert restored.returncode == 0, (restored.out, restored.err)
    assert rows(project.production) == PRODUCTION_ROWS
    assert rows(project.development) == DEVELOPMENT_ROWS + 1, "the top-level database must not be touched"
    assert project.json("snapshot", "diff", snapshot_id)["changed"] is False  # `latest` is the pre-restore one


def test_older_default_snapshots_keep_their_label_and_are_not_production(project: Project) -> None:
    """Snapshots taken without --env before this change (of the top-level config, env:default)
    are still listed, but a restore without --env (production) never picks them."""
    project.write_config(production_table=False)
    old = project.json("snapshot", "create", "-m", "top-level, production had no table")
    assert old["environment"] == "default" and saved_rows(old) == DEVELOPMENT_ROWS
    project.write_config(production_table=True)

    everything = project.json("snapshot", "list")
    assert [snapshot["environment"] for snapshot in everything] == ["default"]
    assert project.json("snapshot", "list", "--env", "production") == []
    refused = project.lockstep("snapshot", "restore", "latest", "--database", "main", "--yes")
    assert refused.returncode != 0 and "no lockstep snapshots of environment 'production'" in refused.err
    assert rows(project.production) == PRODUCTION_ROWS
    by_id = project.lockstep("snapshot", "restore", old["short_id"], "--database", "main", "--yes")
    assert by_id.returncode != 0 and "only of default" in by_id.err, by_id.err
    assert "--env default" not in by_id.err and "--database NAME --to URL" in by_id.err, by_id.err
    named = project.lockstep("snapshot", "restore", old["short_id"], "--env", "default", "--database", "main")
    assert "unknown environment 'default'" in named.err and "leave --env out" not in named.err, named.err
    assert "--database NAME --to URL" in named.err, named.err
    assert rows(project.production) == PRODUCTION_ROWS

    new = project.json("snapshot", "create", "-m", "production's")
    listed = project.json("snapshot", "list")
    assert [snapshot["id"] for snapshot in listed] == [old["id"], new["id"]]
    assert project.json("snapshot", "show", "latest")["id"] == new["id"]


def test_doctor_without_env_counts_production_snapshots_not_the_older_default_ones(project: Project) -> None:
    """doctor used to count env:default snapshots without --env even when production has a table:
    those hold the top-level (development) database, not a backup of production's."""
    project.write_config(production_table=False)
    project.json("snapshot", "create", "-m", "top-level")
    project.write_config(production_table=True)
    checks = {check["name"]: check for check in json.loads(project.lockstep("--json", "doctor").out)}
    assert checks["last good snapshot"]["status"] == "fail", checks["last good snapshot"]

    project.json("backup")
    checks = {check["name"]: check for check in json.loads(project.lockstep("--json", "doctor").out)}
    assert checks["last good snapshot"]["status"] == "pass", checks["last good snapshot"]


def test_verify_and_forget_without_env_work_on_the_default_environment(project: Project) -> None:
    project.write_config(production_table=False)
    old = project.json("snapshot", "create", "-m", "top-level")
    project.write_config(production_table=True)
    new = project.json("snapshot", "create", "--env", "production", "-m", "production's")

    verified = project.lockstep("snapshot", "verify", "latest", "--level", "data")
    assert verified.returncode == 0, verified.err
    assert new["short_id"] in verified.out + verified.err and old["short_id"] not in verified.out + verified.err

    # forget without --env: every environment's snapshots, each by its own retention, as before.
    planned = project.lockstep("--json", "snapshot", "forget", "--dry-run")
    assert planned.returncode == 0, planned.err
    assert old["id"] in planned.out and new["id"] in planned.out


def test_without_env_the_repository_is_the_default_environments_too(project: Project) -> None:
    """production keeps its snapshots in a repository of its own: `backup` without --env writes
    there, and `snapshot list`/`show`/`forget` without --env read there, where it is."""
    production_repository = project.root / "production-repository"
    initialised = run_lockstep(["repo", "init", "-r", str(production_repository)], env=project.env)
    assert initialised.returncode == 0, initialised.err
    with (project.root / "lockstep.toml").open("a") as config:
        config.write(f'\n[environments.production.repository]\nurl = "{production_repository}"\n')

    backup = project.json("backup")
    assert [snapshot["id"] for snapshot in project.json("snapshot", "list", "--env", "production")] == [
        backup["snapshot_id"]
    ]
    assert [snapshot["id"] for snapshot in project.json("snapshot", "list")] == [backup["snapshot_id"]]
    assert project.json("snapshot", "show", "latest")["id"] == backup["snapshot_id"]
    planned = project.lockstep("--json", "snapshot", "forget", "--dry-run")
    assert planned.returncode == 0 and backup["snapshot_id"] in planned.out, planned.err
    assert not any((project.repository / "snapshots").iterdir()), "written to the top-level repository"
    listed = project.json("repo", "snapshots")  # the repo commands take the same repository from the config
    assert [snapshot["id"] for snapshot in listed] == [backup["snapshot_id"]]


def test_no_snapshot_yet_hint_names_env_only_for_another_environment(project: Project) -> None:
    """The hint said `snapshot create --env production` for default_environment, where leaving
    --env out does the same, and no --env for another environment in an empty repository."""
    staging = f'\n[environments.staging.databases.main]\nurl = "sqlite:///{project.development}"\n'
    with (project.root / "lockstep.toml").open("a") as config:
        config.write(staging)
    empty = project.lockstep("snapshot", "verify", "latest", "--env", "staging")
    assert "make one with `lockstep snapshot create --env staging`" in " ".join(empty.err.split()), empty.err

    project.write_config(production_table=False)
    project.json("snapshot", "create", "-m", "top-level, production had no table")
    project.write_config(production_table=True)
    with (project.root / "lockstep.toml").open("a") as config:
        config.write(staging)
    for arguments in ((), ("--env", "production")):
        refused = project.lockstep("snapshot", "show", "latest", *arguments)
        assert refused.returncode != 0 and "no lockstep snapshots of environment 'production'" in refused.err
        hint = " ".join(refused.err.split())
        assert "make one with `lockstep snapshot create`," in hint and "--env production`" not in hint, hint
    other = project.lockstep("snapshot", "verify", "latest", "--env", "staging")
    assert "no lockstep snapshots of environment 'staging'" in other.err, other.err
    assert "make one with `lockstep snapshot create --env staging`" in " ".join(other.err.split()), other.err
