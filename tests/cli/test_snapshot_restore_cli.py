"""`lockstep snapshot restore` end to end: in place with a pre-restore snapshot and a
confirmation, --to another database, --code and --files, with the real CLI in a child process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.cli.test_snapshot_cli import Project, git, make_sqlite, sqlite_fingerprint
from tests.cli.test_snapshot_verify_cli import make_project
from tests.conftest import TEST_PASSWORD, Completed
from tests.pipeline.test_verify import postgresql_database, rewrite_manifest, run_postgresql, unique_name


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh project with a SQLite database and an initialised repository."""
    return make_project(tmp_path)


def damage_live_database(project: Project) -> None:
    import sqlite3

    with sqlite3.connect(project.root / "app.db") as connection:
        connection.executescript(
            "DELETE FROM orders WHERE id > 300; UPDATE customers SET name = 'changed' WHERE id = 1;"
            "CREATE TABLE scratchpad (note TEXT); INSERT INTO scratchpad VALUES ('written after');"
        )
    connection.close()


def run_on_terminal(project: Project, answer: bytes, *arguments: str) -> Completed:
    """Run the CLI with stdin on a pseudo-terminal and type `answer` at the prompt."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "lockstep", *arguments],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=project.root,
            env={**os.environ, "LOCKSTEP_SCRYPT_N": "1024", **project.env},
        )
        os.write(controller, answer)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        os.close(terminal)
        os.close(controller)
    return Completed(process.returncode, stdout, stderr)


def test_in_place_is_refused_without_yes_or_a_terminal_and_declined_at_the_prompt(project: Project) -> None:
    """Without --yes and without a terminal: exit 2 saying to pass --yes. On a terminal,
    answering no: exit 1. Either way the live database and the snapshot list are untouched."""
    project.create("-m", "good")
    damage_live_database(project)
    live = sqlite_fingerprint(project.root / "app.db")
    snapshots = project.snapshot_ids()
    refused = project.lockstep("snapshot", "restore", "latest")
    assert refused.returncode == 2
    assert "--yes" in refused.err and "main" in refused.err
    declined = run_on_terminal(project, b"n\n", "snapshot", "restore", "latest")
    assert declined.returncode == 1, declined.err
    assert "orders" in declined.out and "cancelled" in declined.err
    assert sqlite_fingerprint(project.root / "app.db") == live
    assert project.snapshot_ids() == snapshots


def test_in_place_with_yes_takes_a_pre_restore_snapshot_and_verifies(project: Project, tmp_path: Path) -> None:
    """--yes: a pre-restore snapshot (kind pre-restore) holds the live state, the database is
    back to the snapshot's fingerprint, and the pre-restore snapshot can bring the live state back."""
    created = project.create("-m", "good")
    damage_live_database(project)
    damaged = sqlite_fingerprint(project.root / "app.db")
    document = json.loads(project.ok("snapshot", "restore", created["short_id"], "--yes", "--json").out)
    assert sqlite_fingerprint(project.root / "app.db") == {
        table["name"]: (table["rows"], table["checksum"]) for table in created["databases"]["main"]["tables"]
    }
    assert document["databases"][0]["name"] == "main" and document["databases"][0]["verified"] is True
    discarded = {table["table"]: table for table in document["discarded"][0]["tables"]}
    assert discarded["orders"]["rows_added"] == 0 and discarded["orders"]["rows_removed"] == 45
    assert discarded["scratchpad"]["status"] == "added"
    assert any("--code DIR" in hint for hint in document["hints"])
    pre_restore = document["pre_restore_snapshot"]
    listed = {item["id"]: item for item in json.loads(project.ok("snapshot", "list", "--json").out)}
    assert listed[pre_restore]["kind"] == "pre-restore"
    tags = next(
        item["tags"] for item in json.loads(project.repo("snapshots", "--json").out) if item["id"] == pre_restore
    )
    assert "kind:pre-restore" in tags
    back = project.ok("snapshot", "restore", pre_restore[:10], "--database", "main", "--yes")
    assert "restored" in back.out and "verified" in back.out
    assert sqlite_fingerprint(project.root / "app.db") == damaged


def test_the_next_backup_the_same_day_keeps_the_pre_restore_snapshot(project: Project) -> None:
    """The pre-restore snapshot is the only undo of a mistaken restore: the backup that follows
    the same day applies retention (one daily snapshot kept) and used to forget it. The
    pre-restore rule (keep_pre_restore, default 10) keeps it, and forget --dry-run says why."""
    with (project.root / "lockstep.toml").open("a") as config:
        config.write('\n[backup]\nmin_free_disk_mb = 1\nverify_level = "none"\n')
    git(project.root, "commit", "-q", "-am", "backup settings")
    project.create("-m", "good")
    damage_live_database(project)
    pre_restore = json.loads(project.ok("snapshot", "restore", "latest", "--yes", "--json").out)["pre_restore_snapshot"]
    backup = json.loads(project.ok("backup", "--json").out)
    assert pre_restore not in backup["forgotten"]
    listed = {item["id"]: item["kind"] for item in json.loads(project.ok("snapshot", "list", "--json").out)}
    # restic's rules keep the day's newest and, while the counts are not filled, the oldest
    assert list(listed.values()) == ["manual", "pre-restore", "scheduled"] and pre_restore in listed
    dry = json.loads(project.ok("snapshot", "forget", "--dry-run", "--json").out)
    reasons = {item["id"]: item["reasons"] for group in dry["groups"] for item in group["keep"]}
    assert reasons[pre_restore] == ["pre-restore snapshot"]


def test_a_restore_that_fails_its_check_names_the_database_and_the_pre_restore_snapshot(project: Project) -> None:
    """When the restored tables do not match the manifest: exit 12, the database named, and the
    pre-restore snapshot ID given so the user can go back."""
    created = project.create("-m", "good")
    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        repository.load_index()

        def wrong(document: dict[str, object]) -> None:
            document["databases"]["main"]["tables"][0]["rows"] = 99  # type: ignore[index]

        bad = rewrite_manifest(repository, repository.load_snapshot(created["id"]), wrong)
    finally:
        repository.close()
    failed = project.lockstep("snapshot", "restore", bad.id[:12], "--yes")
    assert failed.returncode == 12, failed.err
    assert "database main" in failed.err and "pre-restore snapshot" in failed.err
    pre_restore = [
        item for item in json.loads(project.ok("snapshot", "list", "--json").out) if item["kind"] == "pre-restore"
    ]
    assert len(pre_restore) == 1 and pre_restore[0]["short_id"] in failed.err


@pytest.mark.slow
def test_restore_to_another_database_creates_it_and_refuses_a_non_empty_one(project: Project) -> None:
    """--to a missing PostgreSQL database creates it; a second --to the now non-empty database is
    refused without --yes and accepted with it; no pre-restore snapshot either way."""
    with postgresql_database(
        "CREATE TABLE items (id serial PRIMARY KEY, label text);"
        "INSERT INTO items (label) SELECT 'item ' || g FROM generate_series(1, 120) g;"
    ) as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "postgresql")
        target_name = unique_name()
        target = f"postgresql://postgres@127.0.0.1:5432/{target_name}"
        try:
            restored = project.ok("snapshot", "restore", "latest", "--database", "shop", "--to", target)
            assert f"restored into {target}" in restored.out
            assert run_postgresql(target, "SELECT count(*) FROM items") == [(120,)]
            refused = project.lockstep("snapshot", "restore", "latest", "--database", "shop", "--to", target)
            assert refused.returncode == 2 and "not empty" in refused.err and "--yes" in refused.err
            run_postgresql(target, "DELETE FROM items WHERE id > 100")
            project.ok("snapshot", "restore", "latest", "--database", "shop", "--to", target, "--yes")
            assert run_postgresql(target, "SELECT count(*) FROM items") == [(120,)]
            kinds = [item["kind"] for item in json.loads(project.ok("snapshot", "list", "--json").out)]
            assert kinds == ["manual"]
        finally:
            run_postgresql(url, f'DROP DATABASE IF EXISTS "{target_name}" WITH (FORCE)', database="postgres")


def test_code_and_files_are_written_to_directories(project: Project, tmp_path: Path) -> None:
    """--code writes the recorded commit's tree plus the stored uncommitted diff; --files writes
    the config file and the secret (mode 0600); no database is touched."""
    (project.root / "app.py").write_text("print('v2, not committed')\n")
    created = project.create("--allow-dirty", "-m", "dirty")
    git(project.root, "checkout", "-q", "--", "app.py")
    (project.root / "later.txt").write_text("committed after the snapshot\n")
    git(project.root, "add", "later.txt")
    git(project.root, "commit", "-q", "-m", "later")
    live = sqlite_fingerprint(project.root / "app.db")
    code, files = tmp_path / "code", tmp_path / "files"
    result = project.ok("snapshot", "restore", created["short_id"], "--code", str(code), "--files", str(files))
    assert "uncommitted changes" in result.out
    assert (code / "app.py").read_text() == "print('v2, not committed')\n"
    assert (code / "lockstep.toml").exists() and not (code / "later.txt").exists()
    assert not (code / ".git").exists()
    assert (files / "config" / "app.yml").read_text() == "currency: EUR\n"
    assert stat.S_IMODE((files / ".env").stat().st_mode) == 0o600
    assert sqlite_fingerprint(project.root / "app.db") == live


def test_code_is_restored_only_into_a_new_or_empty_directory(project: Project, tmp_path: Path) -> None:
    """--code into a directory with files overwrote them silently, and a file where the tree has
    a directory crashed half-way ("internal error: NotADirectoryError"). Both are usage errors
    now, raised before any database is touched; an empty directory is fine."""
    created = project.create("-m", "v1")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "app.py").write_text("my own work\n")
    (busy / "config").write_text("a file where the snapshot has a directory\n")
    live = sqlite_fingerprint(project.root / "app.db")
    damage_live_database(project)
    damaged = sqlite_fingerprint(project.root / "app.db")
    assert damaged != live
    refused = project.lockstep("snapshot", "restore", created["short_id"], "--code", str(busy), "--yes")
    assert refused.returncode == 2, refused.err
    assert "not empty" in refused.err and "new or empty directory" in refused.err
    assert (busy / "app.py").read_text() == "my own work\n"
    assert sorted(path.name for path in busy.iterdir()) == ["app.py", "config"]
    assert sqlite_fingerprint(project.root / "app.db") == damaged  # nothing restored in place

    under_a_file = project.lockstep("snapshot", "restore", created["short_id"], "--code", str(busy / "app.py" / "code"))
    assert under_a_file.returncode == 2, under_a_file.err
    assert "internal error" not in under_a_file.err and "app.py" in under_a_file.err

    empty = tmp_path / "empty"
    empty.mkdir()
    project.ok("snapshot", "restore", created["short_id"], "--code", str(empty))
    assert (empty / "app.py").read_text() == "print('v1')\n"


def test_a_missing_live_database_is_restored_without_asking(project: Project) -> None:
    """Disaster recovery: when the live SQLite file is gone there is nothing to discard, so no
    confirmation and no pre-restore snapshot are needed; the database comes back verified."""
    created = project.create("-m", "good")
    (project.root / "app.db").unlink()
    result = project.ok("snapshot", "restore", "latest", "--database", "main")
    assert "verified" in result.out and "pre-restore" not in result.out
    assert sqlite_fingerprint(project.root / "app.db") == {
        table["name"]: (table["rows"], table["checksum"]) for table in created["databases"]["main"]["tables"]
    }
    assert [item["kind"] for item in json.loads(project.ok("snapshot", "list", "--json").out)] == ["manual"]


def test_to_a_configured_database_is_an_in_place_restore(project: Project) -> None:
    """--to the URL of a database in lockstep.toml (spelt another way) replaces live data: it
    must not skip the pre-restore snapshot, the report of what is discarded and the
    confirmation, or the rows written since are gone with no way back."""
    from tests.cli.test_snapshot_cli import make_sqlite

    make_sqlite(project.root / "other.db")
    project.write_config({"main": "sqlite:///app.db", "other": "sqlite:///other.db"})
    git(project.root, "commit", "-q", "-am", "two databases")
    created = project.create("-m", "good")
    damage_live_database(project)
    damaged = sqlite_fingerprint(project.root / "app.db")
    same_file = f"sqlite:///{project.root}/./app.db"
    refused = project.lockstep("snapshot", "restore", "latest", "--database", "main", "--to", same_file)
    assert refused.returncode == 2 and "--yes" in refused.err, refused.err
    assert sqlite_fingerprint(project.root / "app.db") == damaged
    document = json.loads(
        project.ok("snapshot", "restore", "latest", "--database", "main", "--to", same_file, "--yes", "--json").out
    )
    assert document["pre_restore_snapshot"] is not None
    assert document["discarded"] and document["discarded"][0]["changed"] is True
    assert sqlite_fingerprint(project.root / "app.db") == {
        table["name"]: (table["rows"], table["checksum"]) for table in created["databases"]["main"]["tables"]
    }
    # Into another configured database: that one's rows are what the pre-restore snapshot keeps.
    import sqlite3

    with sqlite3.connect(project.root / "other.db") as connection:
        connection.execute("INSERT INTO orders (customer_id, total) VALUES (1, 99.5)")
    connection.close()
    other = sqlite_fingerprint(project.root / "other.db")
    into_other = json.loads(
        project.ok(
            "snapshot",
            "restore",
            created["short_id"],
            "--database",
            "main",
            "--to",
            "sqlite:///other.db",
            "--yes",
            "--json",
        ).out
    )
    pre_restore = into_other["pre_restore_snapshot"]
    assert pre_restore is not None and pre_restore != document["pre_restore_snapshot"]
    project.ok("snapshot", "restore", pre_restore[:10], "--database", "other", "--yes")
    assert sqlite_fingerprint(project.root / "other.db") == other


def test_code_restore_reports_what_it_could_not_restore_once_per_problem(tmp_path: Path) -> None:
    """The restorer's warnings were thrown away: sockets left in a release (a PHP-FPM socket, a
    dev server's) were skipped without a word, and so would an owner or an extended attribute
    the restoring user cannot set. Now each distinct problem is one `warning:` line (the same
    problem on many files said once, with the first path), and a `warnings` list in --json."""
    root = tmp_path / "site"
    release = root / "releases" / "20261123070000"
    (release / "run").mkdir(parents=True)
    (release / "index.php").write_text("<?php echo 'v7';\n")
    (root / "current").symlink_to(Path("releases") / "20261123070000")
    sockets = []
    for name in ("php-fpm.sock", "worker.sock", "vite.sock"):
        sockets.append(socket.socket(socket.AF_UNIX))
        with contextlib.chdir(release / "run"):  # a relative name: tmp_path can be too long for one
            sockets[-1].bind(name)
    for listening in sockets:
        listening.close()
    project = Project(root, tmp_path / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "release-directory"\npath = "current"\n'
    )
    assert project.repo("init").returncode == 0
    created = project.create("-m", "v7")

    human = project.ok("snapshot", "restore", created["short_id"], "--code", str(tmp_path / "restored"))
    first = tmp_path / "restored" / "run" / "php-fpm.sock"
    assert f"warning: skipped socket on 3 files (first: {first})" in human.out.splitlines(), human.out
    assert (tmp_path / "restored" / "index.php").read_text() == "<?php echo 'v7';\n"

    as_json = project.ok("snapshot", "restore", created["short_id"], "--code", str(tmp_path / "again"), "--json")
    document = json.loads(as_json.out)
    assert document["warnings"] == [f"skipped socket on 3 files (first: {tmp_path / 'again' / 'run' / 'php-fpm.sock'})"]
    assert "checked against its tree_sha256" in document["code"]


def test_files_that_would_be_overwritten_are_confirmed_and_saved_first(project: Project) -> None:
    """`--files DIR` over live config and secret files overwrote them without asking and kept
    no copy, while a database restore asks and takes a pre-restore snapshot. Now the files with
    other content are named (never their content), the restore is refused without --yes or a
    terminal and cancelled by a "no", and with --yes their current versions go into a
    pre-restore snapshot that puts them back."""
    created = project.create("-m", "good")
    (project.root / "config" / "app.yml").write_text("currency: USD\n")
    (project.root / ".env").write_text("STRIPE_KEY=sk_live_rotated\n")
    snapshots = project.snapshot_ids()

    refused = project.lockstep("snapshot", "restore", created["short_id"], "--files", ".")
    assert refused.returncode == 2, refused.err
    assert "--yes" in refused.err and "2 files" in refused.err
    declined = run_on_terminal(project, b"n\n", "snapshot", "restore", created["short_id"], "--files", ".")
    assert declined.returncode == 1, declined.err
    assert "config/app.yml" in declined.err and ".env" in declined.err and "cancelled" in declined.err
    for completed in (refused, declined):
        assert "sk_live_rotated" not in completed.out + completed.err and "USD" not in completed.out + completed.err
    assert (project.root / ".env").read_text() == "STRIPE_KEY=sk_live_rotated\n"
    assert project.snapshot_ids() == snapshots

    document = json.loads(project.ok("snapshot", "restore", created["short_id"], "--files", ".", "--yes", "--json").out)
    assert sorted(document["overwritten_files"]) == [".env", "config/app.yml"]
    assert "sk_live_rotated" not in json.dumps(document)
    assert (project.root / ".env").read_text() == "STRIPE_KEY=sk_test_restore\n"
    assert (project.root / "config" / "app.yml").read_text() == "currency: EUR\n"
    pre_restore = document["pre_restore_snapshot"]
    listed = {item["id"]: item for item in json.loads(project.ok("snapshot", "list", "--json").out)}
    assert listed[pre_restore]["kind"] == "pre-restore"

    back = project.ok("snapshot", "restore", pre_restore[:10], "--files", ".", "--yes")
    assert "overwritten in .: " in back.out and "2 config and secret files written" in back.out
    assert (project.root / ".env").read_text() == "STRIPE_KEY=sk_live_rotated\n"
    assert stat.S_IMODE((project.root / ".env").stat().st_mode) == 0o600
    assert (project.root / "config" / "app.yml").read_text() == "currency: USD\n"


def test_unchanged_files_and_a_database_share_one_confirmation_and_pre_restore_snapshot(project: Project) -> None:
    """Files with the snapshot's content are not asked about; a database and a changed file
    restored together are confirmed once and saved in one pre-restore snapshot."""
    created = project.create("-m", "good")
    unchanged = project.ok("snapshot", "restore", created["short_id"], "--files", ".")
    assert "pre-restore" not in unchanged.out
    assert "1 config and secret file" not in unchanged.out and "2 config and secret files written" in unchanged.out
    damage_live_database(project)
    (project.root / "config" / "app.yml").write_text("currency: USD\n")
    asked = run_on_terminal(
        project, b"n\n", "snapshot", "restore", created["short_id"], "--database", "main", "--files", "."
    )
    assert asked.returncode == 1, asked.err
    assert asked.err.count("replace main in place and 1 file in .") == 1, asked.err
    document = json.loads(
        project.ok(
            "snapshot", "restore", created["short_id"], "--database", "main", "--files", ".", "--yes", "--json"
        ).out
    )
    assert document["overwritten_files"] == ["config/app.yml"]
    assert [item["kind"] for item in json.loads(project.ok("snapshot", "list", "--json").out)].count("pre-restore") == 1
    shown = json.loads(project.ok("snapshot", "show", document["pre_restore_snapshot"][:10], "--json").out)
    assert list(shown["databases"]) == ["main"]
    assert [item["path"] for item in shown["files"]] == ["/files/config/config/app.yml"]


def test_code_or_files_a_snapshot_lacks_are_refused_before_anything_is_restored(tmp_path: Path) -> None:
    """A snapshot of a project without git or [files]: `--code DIR` exited 13 only after the
    database named with it had been restored, and `--files DIR` reported "0 files" as a
    success. Both exit 13 now, saying so, before anything is written."""
    root = tmp_path / "plain"
    root.mkdir()
    make_sqlite(root / "app.db")
    repository = tmp_path / "repository"
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{repository}"\n\n[databases.main]\nurl = "sqlite:///app.db"\n'
    )
    project = Project(root, repository)
    assert project.repo("init").returncode == 0
    created = project.create("-m", "one")
    assert created["code"] is None and created["files"] == []

    code = project.lockstep(
        "snapshot",
        "restore",
        "latest",
        "--database",
        "main",
        "--to",
        "sqlite:///copy.db",
        "--code",
        str(tmp_path / "c"),
    )
    assert code.returncode == 13, code.err
    assert "records no code; nothing was restored" in code.err, code.err
    assert not (root / "copy.db").exists() and not (tmp_path / "c").exists()

    files = project.lockstep("snapshot", "restore", "latest", "--files", str(tmp_path / "f"))
    assert files.returncode == 13, files.err
    assert "records no config or secret files; nothing was restored" in files.err, files.err
    assert not (tmp_path / "f").exists()
