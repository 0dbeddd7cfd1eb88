"""Two projects sharing one repository: each sees, restores and forgets only its own snapshots.

QA found that `snapshot restore latest` in project A restored project B's database into A's
when both used the same repository and a database of the same name: snapshots were stored under
/lockstep/<project> but no command looked at it. These run the real CLI on a real repository
with two real SQLite projects.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, Completed, run_lockstep

ENVIRONMENT = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "200"}


class SharingProject:
    """A project directory with a SQLite database `main` and a lockstep.toml naming `repository`."""

    def __init__(self, root: Path, repository: Path, extra: str = "") -> None:
        self.root = root
        root.mkdir(parents=True)
        (root / "lockstep.toml").write_text(
            f'{extra}[repository]\nurl = "{repository}"\n\n[databases.main]\nurl = "sqlite:///app.db"\n'
        )
        self.write_note(f"{root.name} v1")

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=ENVIRONMENT)

    def ok(self, *arguments: str) -> Completed:
        result = self.lockstep(*arguments)
        assert result.returncode == 0, result.err
        return result

    def create(self, *arguments: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.ok("snapshot", "create", "--json", *arguments).out)
        return document

    def listed_ids(self) -> set[str]:
        return {item["id"] for item in json.loads(self.ok("snapshot", "list", "--json").out)}

    def write_note(self, text: str) -> None:
        with contextlib.closing(sqlite3.connect(self.root / "app.db")) as connection, connection:
            connection.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
            connection.execute("DELETE FROM notes")
            connection.execute("INSERT INTO notes VALUES (?)", (text,))

    def note(self) -> str:
        with contextlib.closing(sqlite3.connect(self.root / "app.db")) as connection:
            row = connection.execute("SELECT text FROM notes").fetchone()
        return str(row[0])


@pytest.fixture
def shared(tmp_path: Path) -> tuple[SharingProject, SharingProject, Path]:
    repository = tmp_path / "repository"
    first = SharingProject(tmp_path / "a", repository)
    second = SharingProject(tmp_path / "b", repository)
    first.ok("repo", "init")
    return first, second, repository


def all_snapshot_ids(project: SharingProject) -> set[str]:
    """What the raw `repo snapshots` lists: every snapshot, of every project (it mirrors restic)."""
    return {item["id"] for item in json.loads(project.ok("repo", "snapshots", "--json").out)}


def test_restore_latest_restores_this_projects_data_not_the_other_projects(
    shared: tuple[SharingProject, SharingProject, Path],
) -> None:
    first, second, _ = shared
    first.create("-m", "a's data")
    second.create("-m", "b's data, taken after a's")
    first.write_note("a v2, to be undone")
    first.ok("snapshot", "restore", "latest", "--yes")
    assert first.note() == "a v1"  # it was "b v1": B's database restored into A's
    assert second.note() == "b v1"


def test_list_show_and_latest_see_only_this_projects_snapshots(
    shared: tuple[SharingProject, SharingProject, Path],
) -> None:
    first, second, _ = shared
    ours = first.create()
    theirs = second.create()
    assert first.listed_ids() == {ours["id"]}
    assert second.listed_ids() == {theirs["id"]}
    assert all_snapshot_ids(first) == {ours["id"], theirs["id"]}
    shown = json.loads(first.ok("snapshot", "show", "latest", "--json").out)
    assert shown["id"] == ours["id"]
    diff = first.ok("snapshot", "diff", "latest", "--json")
    assert json.loads(diff.out)["snapshot"] == ours["id"]


def test_another_projects_snapshot_id_is_refused_with_whose_it_is(
    shared: tuple[SharingProject, SharingProject, Path],
) -> None:
    first, second, _ = shared
    first.create()
    theirs = second.create()
    for command in (("show",), ("verify",), ("diff",), ("restore", "--yes")):
        refused = first.lockstep("snapshot", command[0], theirs["id"][:8], *command[1:])
        assert refused.returncode == ExitCode.NOT_FOUND, (command, refused.err)
        assert "project 'b'" in refused.err and "-c" in refused.err and "repo restore" in refused.err, refused.err
    assert first.note() == "a v1"


def test_latest_with_only_another_projects_snapshots_says_so(
    shared: tuple[SharingProject, SharingProject, Path],
) -> None:
    first, second, _ = shared
    second.create()
    refused = first.lockstep("snapshot", "restore", "latest", "--yes")
    assert refused.returncode == ExitCode.NOT_FOUND, refused.err
    assert "no lockstep snapshots of project 'a'" in refused.err and "'b'" in refused.err, refused.err
    assert first.note() == "a v1"
    listed = first.ok("snapshot", "list")
    assert "0 snapshots" in listed.out and "other projects: 'b'" in listed.out, listed.out


def test_forget_never_touches_the_other_projects_snapshots(
    shared: tuple[SharingProject, SharingProject, Path],
) -> None:
    first, second, _ = shared
    retention = "\n[retention]\nkeep_daily = 1\nkeep_weekly = 0\nkeep_monthly = 0\n"
    for project in (first, second):
        with (project.root / "lockstep.toml").open("a") as config:
            config.write(retention)
    theirs = {second.create()["id"] for _ in range(3)}
    ours = [first.create()["id"] for _ in range(3)]
    first.ok("snapshot", "forget")
    assert first.listed_ids() == {ours[-1]}
    assert second.listed_ids() == theirs
    assert all_snapshot_ids(first) == theirs | {ours[-1]}


def test_the_project_key_names_the_project_whatever_its_directory(tmp_path: Path) -> None:
    """Two directories named alike share nothing once each sets its own `project`; a project
    moved to a directory of another name keeps its snapshots by setting the old name."""
    repository = tmp_path / "repository"
    shop = SharingProject(tmp_path / "one" / "app", repository, extra='project = "shop"\n\n')
    blog = SharingProject(tmp_path / "two" / "app", repository, extra='project = "blog"\n\n')
    shop.ok("repo", "init")
    ours = shop.create()
    theirs = blog.create()
    assert shop.listed_ids() == {ours["id"]} and blog.listed_ids() == {theirs["id"]}
    moved = SharingProject(tmp_path / "elsewhere", repository, extra='project = "shop"\n\n')
    assert moved.listed_ids() == {ours["id"]}


def test_an_invalid_project_name_is_a_usage_error(tmp_path: Path) -> None:
    project = SharingProject(tmp_path / "a", tmp_path / "repository", extra='project = "../b"\n\n')
    refused = project.lockstep("snapshot", "list")
    assert refused.returncode == ExitCode.USAGE, refused.err
    assert "project" in refused.err, refused.err


def test_a_backup_copies_and_forgets_only_this_projects_snapshots(
    shared: tuple[SharingProject, SharingProject, Path], tmp_path: Path
) -> None:
    """The copy's retention sees only this project's snapshots, so it must not be sent the
    other project's either: they would pile up there, never forgotten."""
    first, second, _ = shared
    usb = tmp_path / "usb"
    password = tmp_path / "usb-password"
    password.write_text("usb-password-of-a\n")
    password.chmod(0o600)
    initialised = run_lockstep(
        ["repo", "init", "-r", str(usb)], env={**ENVIRONMENT, "LOCKSTEP_PASSWORD": "usb-password-of-a"}
    )
    assert initialised.returncode == 0, initialised.err
    with (first.root / "lockstep.toml").open("a") as config:
        config.write(f'\n[repository.copies.usb]\nurl = "{usb}"\npassword_file = "{password}"\n')
        config.write("\n[retention]\nkeep_daily = 1\nkeep_weekly = 0\nkeep_monthly = 0\n")
    theirs = {second.create()["id"] for _ in range(2)}
    ours = first.create()
    first.ok("backup")
    assert theirs <= all_snapshot_ids(first)  # the backup's retention left the other project's alone
    copied = run_lockstep(
        ["repo", "snapshots", "--json", "-r", str(usb), "--password-file", str(password)], env=ENVIRONMENT
    )
    assert copied.returncode == 0, copied.err
    paths = [tuple(item["paths"]) for item in json.loads(copied.out)]
    assert len(paths) == 1 and set(paths) == {("/lockstep/a",)}, paths  # keep_daily = 1 on the copy too
    assert first.listed_ids() - {ours["id"]} and ours["id"] not in first.listed_ids()


def test_an_environment_cannot_rename_the_project(tmp_path: Path) -> None:
    """Commands without --env use the top-level name: an environment's own would hide its
    snapshots from `snapshot list` and from the retention of `snapshot forget`."""
    project = SharingProject(tmp_path / "a", tmp_path / "repository")
    with (project.root / "lockstep.toml").open("a") as config:
        config.write('\n[environments.staging]\nproject = "other"\n')
    refused = project.lockstep("snapshot", "list")
    assert refused.returncode == ExitCode.USAGE, refused.err
    assert "environments.staging sets project" in refused.err, refused.err
