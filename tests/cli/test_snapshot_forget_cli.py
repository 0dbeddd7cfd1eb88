"""`lockstep snapshot forget` end to end: snapshots made by the real CLI, then re-dated through the
repository API (a snapshot's time is only its JSON document), the real CLI deciding, and the real
restic checking what is left after --prune."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, Completed, require_binary, run_lockstep, run_restic

RETENTION = "\n[retention]\nkeep_daily = 2\nkeep_weekly = 0\nkeep_monthly = 0\nkeep_pre_deploy = 1\n"


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repository = root / "repository"
        self.env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "220"}

    def write_config(self, retention: str = RETENTION) -> None:
        (self.root / "lockstep.toml").write_text(
            f'[repository]\nurl = "{self.repository}"\n\n[databases.main]\nurl = "sqlite:///{self.root / "app.db"}"\n'
            f"\n[environments.production]\n[environments.staging]\n{retention}"
        )

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=self.env)

    def ok(self, *arguments: str) -> Completed:
        result = self.lockstep(*arguments)
        assert result.returncode == 0, result.err
        return result

    def create(self, *arguments: str) -> str:
        return str(json.loads(self.ok("snapshot", "create", "--json", *arguments).out)["id"])

    def snapshot_ids(self) -> set[str]:
        with self.open() as repository:
            return {snapshot.id for snapshot in repository.list_snapshots()}

    def open(self) -> _Opened:
        return _Opened(self.repository)

    def data_bytes(self) -> int:
        return sum(path.stat().st_size for path in (self.repository / "data").rglob("*") if path.is_file())


class _Opened:
    def __init__(self, location: Path) -> None:
        self.repository = Repository.open(LocalBackend(location), TEST_PASSWORD)

    def __enter__(self) -> Repository:
        return self.repository

    def __exit__(self, *exc: object) -> None:
        self.repository.close()


def redate(project: Project, snapshot_id: str, time: str, tags: list[str] | None = None) -> str:
    """Rewrite a snapshot with another time (and tags): a new snapshot file, the old one removed."""
    with project.open() as repository:
        original = repository.load_snapshot(snapshot_id)
        copy = Snapshot.from_document(original.to_document())
        copy.time = time
        if tags is not None:
            copy.tags = tags
        new_id = repository.save_snapshot(copy)
        repository.backend.remove(FileType.SNAPSHOT, snapshot_id)
        return new_id


def clone(project: Project, template: str, time: str, kind: str, environment: str) -> str:
    """A copy of `template` (same tree) taken at `time`, as `kind` in `environment`."""
    with project.open() as repository:
        copy = Snapshot.from_document(repository.load_snapshot(template).to_document())
        copy.time = time
        copy.tags = ["lockstep", f"kind:{kind}", f"env:{environment}"]
        return repository.save_snapshot(copy)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "shop"
    root.mkdir()
    with sqlite3.connect(root / "app.db") as connection:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
        connection.executemany("INSERT INTO orders (note) VALUES (?)", [(f"order {i}",) for i in range(200)])
    current = Project(root)
    current.write_config()
    current.ok("repo", "init", "-r", str(current.repository))
    return current


def group(document: dict[str, Any], environment: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [item for item in document["groups"] if item["environment"] == environment]
    assert len(found) == 1, found
    return found[0]


def test_forget_applies_the_retention_per_environment_and_spares_other_tools(project: Project) -> None:
    """keep_daily 2 + the pre-deploy snapshot of the last deploy, per environment; a restic
    snapshot in the same repository is never touched; --dry-run changes nothing."""
    template = project.create("--env", "production")
    at = {
        "A": ("2025-03-01T10:00:00Z", "scheduled"),
        "B": ("2025-03-02T10:00:00Z", "pre-deploy"),
        "C": ("2025-03-03T10:00:00Z", "pre-deploy"),
        "D": ("2025-03-04T10:00:00Z", "scheduled"),
        "E": ("2025-03-05T09:00:00Z", "scheduled"),
        "F": ("2025-03-05T10:00:00Z", "manual"),
    }
    made = {name: clone(project, template, time, kind, "production") for name, (time, kind) in at.items()}
    staging = clone(project, template, "2025-03-01T08:00:00Z", "scheduled", "staging")
    with project.open() as repository:
        repository.backend.remove(FileType.SNAPSHOT, template)
    other = project.root / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not lockstep's\n")
    project.ok("repo", "backup", str(other), "-r", str(project.repository))
    [restic_made] = project.snapshot_ids() - set(made.values()) - {staging}
    foreign = {redate(project, restic_made, "2024-01-01T00:00:00Z")}
    before = project.snapshot_ids()
    assert len(before) == 8

    dry = json.loads(project.ok("snapshot", "forget", "--env", "production", "--dry-run", "--json").out)
    assert dry["dry_run"] is True
    assert [item["environment"] for item in dry["groups"]] == ["production"]
    production = group(dry, "production")
    reasons = {item["id"]: item["reasons"] for item in production["keep"]}
    assert reasons == {
        made["F"]: ["daily snapshot"],
        made["D"]: ["daily snapshot"],
        made["C"]: ["pre-deploy snapshot"],
    }
    assert {item["id"] for item in production["remove"]} == {made["A"], made["B"], made["E"]}
    removed = {item["id"]: item["reasons"] for item in production["remove"]}
    assert removed == {
        made["A"]: ["no rule keeps it"],
        made["B"]: ["not of the last deploy"],
        made["E"]: ["no rule keeps it"],
    }
    assert project.snapshot_ids() == before

    human = project.ok("snapshot", "forget", "--env", "production", "--dry-run").out
    assert "environment production" in human and "pre-deploy snapshot" in human
    assert made["A"][:8] in human and "would remove 3 snapshots" in human

    done = json.loads(project.ok("snapshot", "forget", "--env", "production", "--json").out)
    assert set(done["removed"]) == {made["A"], made["B"], made["E"]}
    assert project.snapshot_ids() == before - {made["A"], made["B"], made["E"]}
    assert staging in project.snapshot_ids()

    everything = json.loads(project.ok("snapshot", "forget", "--json").out)
    assert {item["environment"] for item in everything["groups"]} == {"production", "staging"}
    assert everything["removed"] == []
    assert project.snapshot_ids() & foreign == foreign, "another tool's snapshot was touched"


def test_a_restore_after_the_days_backup_keeps_the_backup_as_the_daily(project: Project) -> None:
    """The default retention. A real `lockstep backup`, a deploy's snapshot and a real `snapshot
    restore --yes` (which takes a pre-restore snapshot of the one database) on one day, after a
    backup the day before. restic keeps a day's newest snapshot, so the pre-restore snapshot used
    to be the day's daily, weekly and monthly and the whole-app backup was forgotten; now the
    backup is kept by the calendar rules and the other two by their own rules, each saying why."""
    project.write_config('\n[backup]\nmin_free_disk_mb = 1\nverify_level = "none"\n')
    scheduled = json.loads(project.ok("backup", "--env", "production", "--json").out)["snapshot_id"]
    with sqlite3.connect(project.root / "app.db") as connection:
        connection.execute("DELETE FROM orders WHERE id > 100")
    connection.close()
    restored = json.loads(
        project.ok("snapshot", "restore", scheduled[:10], "--env", "production", "--yes", "--json").out
    )
    pre_restore = restored["pre_restore_snapshot"]
    with project.open() as repository:
        assert "kind:pre-restore" in repository.load_snapshot(pre_restore).tags
    # Fixed times, so the day's order is certain whenever the test runs.
    day_before = clone(project, scheduled, "2025-03-04T02:00:00Z", "scheduled", "production")
    scheduled = redate(project, scheduled, "2025-03-05T02:00:00Z")
    deploy = clone(project, scheduled, "2025-03-05T12:00:00Z", "pre-deploy", "production")
    pre_restore = redate(project, pre_restore, "2025-03-05T15:00:00Z")

    dry = json.loads(project.ok("snapshot", "forget", "--env", "production", "--dry-run", "--json").out)
    production = group(dry, "production")
    assert production["remove"] == []
    kept = {item["id"]: (item["kind"], item["reasons"]) for item in production["keep"]}
    assert kept == {
        scheduled: ("scheduled", ["daily snapshot", "weekly snapshot", "monthly snapshot"]),
        pre_restore: ("pre-restore", ["pre-restore snapshot"]),
        deploy: ("pre-deploy", ["pre-deploy snapshot"]),
        day_before: ("scheduled", ["daily snapshot", "oldest weekly snapshot", "oldest monthly snapshot"]),
    }
    assert "(manual and scheduled)" in production["policy"]

    human = project.ok("snapshot", "forget", "--env", "production", "--dry-run").out
    scheduled_line = next(line for line in human.splitlines() if scheduled[:8] in line)
    assert "keep" in scheduled_line and "daily snapshot" in scheduled_line
    assert json.loads(project.ok("snapshot", "forget", "--env", "production", "--json").out)["removed"] == []
    assert {scheduled, pre_restore, deploy, day_before} <= project.snapshot_ids()


def test_a_project_that_only_deploys_keeps_a_pre_deploy_snapshot_per_month(project: Project) -> None:
    """Deploys in January and February and no backup, then a backup and a deploy in March:
    keep_monthly (all) keeps January's and February's newest pre-deploy snapshots as those months'
    monthlies, March's backup as its monthly (not the later deploy's snapshot), and the last
    day, which has only a deploy, keeps that deploy's snapshot as its daily; --dry-run --json
    says why for each."""
    project.write_config("\n[retention]\nkeep_daily = 1\nkeep_weekly = 0\nkeep_monthly = -1\nkeep_pre_deploy = 1\n")
    template = project.create("--env", "production")
    at = {
        "J1": ("2025-01-10T10:00:00Z", "pre-deploy"),
        "J2": ("2025-01-20T10:00:00Z", "pre-deploy"),
        "F1": ("2025-02-05T10:00:00Z", "pre-deploy"),
        "F2": ("2025-02-25T10:00:00Z", "pre-deploy"),
        "M1": ("2025-03-04T02:00:00Z", "scheduled"),
        "M2": ("2025-03-05T10:00:00Z", "pre-deploy"),
    }
    made = {name: clone(project, template, time, kind, "production") for name, (time, kind) in at.items()}
    with project.open() as repository:
        repository.backend.remove(FileType.SNAPSHOT, template)

    dry = json.loads(project.ok("snapshot", "forget", "--env", "production", "--dry-run", "--json").out)
    production = group(dry, "production")
    kept = {item["id"]: item["reasons"] for item in production["keep"]}
    assert kept == {
        made["J2"]: ["monthly snapshot (no regular snapshot that month)"],
        made["F2"]: ["monthly snapshot (no regular snapshot that month)"],
        made["M1"]: ["monthly snapshot"],
        made["M2"]: ["daily snapshot (no regular snapshot that day)", "pre-deploy snapshot"],
    }
    removed = {item["id"]: item["reasons"] for item in production["remove"]}
    assert removed == {made["J1"]: ["not of the last deploy"], made["F1"]: ["not of the last deploy"]}
    assert project.snapshot_ids() == set(made.values())

    human = project.ok("snapshot", "forget", "--env", "production", "--dry-run").out
    january_line = next(line for line in human.splitlines() if made["J2"][:8] in line)
    assert "keep" in january_line and "no regular snapshot that month" in january_line


def test_keep_last_and_keep_tags_with_restics_reasons(project: Project) -> None:
    """keep_last 2 and keep_tags ["release"], every other rule off, on a real repository: the two
    newest scheduled snapshots ("last snapshot", a later deploy not counted), a manual snapshot
    made with `snapshot create --tag release` and a pre-deploy snapshot tagged release ("has tags
    [release]", whatever its kind) are kept; the rest goes, and the real forget removes exactly it."""
    project.write_config(
        "\n[retention]\nkeep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n"
        'keep_pre_deploy = 0\nkeep_pre_restore = 0\nkeep_tags = ["release"]\n'
    )
    tagged = project.create("--env", "production", "--tag", "release")
    with project.open() as repository:
        assert "release" in repository.load_snapshot(tagged).tags
    release = redate(project, tagged, "2025-01-15T10:00:00Z")
    at = {
        "S1": ("2025-03-01T02:00:00Z", "scheduled"),
        "S2": ("2025-03-02T02:00:00Z", "scheduled"),
        "S3": ("2025-03-03T02:00:00Z", "scheduled"),
        "S4": ("2025-03-04T02:00:00Z", "scheduled"),
        "P1": ("2025-03-04T12:00:00Z", "pre-deploy"),
        "P2": ("2025-03-05T12:00:00Z", "pre-deploy"),
    }
    made = {name: clone(project, release, time, kind, "production") for name, (time, kind) in at.items()}
    made["P1"] = redate(project, made["P1"], at["P1"][0], ["lockstep", "kind:pre-deploy", "env:production", "release"])

    dry = json.loads(project.ok("snapshot", "forget", "--env", "production", "--dry-run", "--json").out)
    production = group(dry, "production")
    assert production["policy"] == (
        "keep 2 latest snapshots (manual and scheduled), plus all snapshots with tags [[release]]"
    )
    kept = {item["id"]: (item["kind"], item["reasons"]) for item in production["keep"]}
    assert kept == {
        made["S4"]: ("scheduled", ["last snapshot"]),
        made["S3"]: ("scheduled", ["last snapshot"]),
        made["P1"]: ("pre-deploy", ["has tags [release]"]),
        release: ("manual", ["has tags [release]"]),
    }
    removed = {item["id"]: item["reasons"] for item in production["remove"]}
    assert removed == {
        made["S1"]: ["no rule keeps it"],
        made["S2"]: ["no rule keeps it"],
        made["P2"]: ["keep_pre_deploy is 0"],
    }
    before = project.snapshot_ids()
    assert before == {release, *made.values()}

    human = project.ok("snapshot", "forget", "--env", "production", "--dry-run").out
    release_line = next(line for line in human.splitlines() if release[:8] in line)
    assert "keep" in release_line and "has tags [release]" in release_line

    done = json.loads(project.ok("snapshot", "forget", "--env", "production", "--json").out)
    assert set(done["removed"]) == {made["S1"], made["S2"], made["P2"]}
    assert project.snapshot_ids() == {release, made["S3"], made["S4"], made["P1"]}


def test_forget_prune_frees_the_space_of_removed_snapshots(project: Project, tmp_path: Path) -> None:
    """Two snapshots with different data on different days, keep_daily 1: --dry-run --prune
    changes nothing, --prune removes the older one and its unique data; restic agrees."""
    restic = require_binary("restic", "apt-get install restic")
    assert restic
    project.write_config("\n[retention]\nkeep_daily = 1\nkeep_weekly = 0\nkeep_monthly = 0\nkeep_pre_deploy = 0\n")
    with sqlite3.connect(project.root / "app.db") as connection:
        connection.execute("CREATE TABLE blobs (data BLOB)")
        connection.executemany("INSERT INTO blobs VALUES (?)", [(os.urandom(256 * 1024),) for _ in range(16)])
    old = redate(project, project.create(), "2025-04-01T03:00:00Z")
    connection = sqlite3.connect(project.root / "app.db", isolation_level=None)
    try:
        connection.execute("DELETE FROM blobs")
        connection.execute("VACUUM")
    finally:
        connection.close()
    new = redate(project, project.create(), "2025-04-02T03:00:00Z")
    size_before = project.data_bytes()

    dry = project.ok("snapshot", "forget", "--dry-run", "--prune")
    assert "would remove 1 snapshot " in dry.out and "dry run" in dry.out
    assert project.snapshot_ids() == {old, new} and project.data_bytes() == size_before

    done = json.loads(project.ok("snapshot", "forget", "--prune", "--json").out)
    assert done["removed"] == [old]
    assert done["prune"] is not None and done["prune"]["packs_deleted"] >= 1
    assert project.snapshot_ids() == {new}
    assert project.data_bytes() < size_before - 3 * 1024 * 1024
    checked = run_restic(str(project.repository), ["check", "--read-data"])
    assert checked.returncode == 0, checked.out + checked.err
    restored = tmp_path / "restored"
    assert run_restic(str(project.repository), ["restore", new, "--target", str(restored)]).returncode == 0
    assert (restored / "databases" / "main.sqlite3").stat().st_size > 0


def test_a_retention_that_keeps_nothing_is_refused(project: Project) -> None:
    project.create()
    project.write_config(
        "\n[retention]\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\nkeep_pre_deploy = 0\nkeep_pre_restore = 0\n"
    )
    result = project.lockstep("snapshot", "forget")
    assert result.returncode == ExitCode.USAGE
    assert "keeps no snapshot" in result.err
    assert len(project.snapshot_ids()) == 1
