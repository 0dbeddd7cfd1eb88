"""`lockstep snapshot create | list | show` end to end: a real git project, real SQLite and
PostgreSQL databases, the real CLI in a child process, and the real restic reading the result."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockstep.databases import adapter_for
from lockstep.databases.base import DatabaseAdapter, ServerLocation
from lockstep.exit_codes import ExitCode
from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.conftest import (
    TEST_PASSWORD,
    Completed,
    missing,
    require_binary,
    restic_blob_list_sha256,
    run_lockstep,
    run_restic,
)

SECRET = "sk_live_DO-NOT-PRINT-4f9a2c"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.org",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.org",
}
POSTGRESQL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def git(work_tree: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(work_tree), *arguments], capture_output=True, check=True, env={**os.environ, **GIT_IDENTITY}
    )
    return completed.stdout.decode().strip()


class Project:
    """A git project with a lockstep.toml, and its repository (outside the work tree)."""

    def __init__(self, root: Path, repository: Path) -> None:
        self.root = root
        self.repository = repository
        self.env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "200", **GIT_IDENTITY}

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=self.env)

    def ok(self, *arguments: str) -> Completed:
        result = self.lockstep(*arguments)
        assert result.returncode == 0, result.err
        return result

    def create(self, *arguments: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.ok("snapshot", "create", "--json", *arguments).out)
        return document

    def repo(self, *arguments: str) -> Completed:
        return run_lockstep(["repo", *arguments, "-r", str(self.repository)], cwd=self.root, env=self.env)

    def snapshot_ids(self) -> list[str]:
        result = self.repo("snapshots", "--json")
        assert result.returncode == 0, result.err
        return [snapshot["id"] for snapshot in json.loads(result.out)]

    def packs(self) -> set[str]:
        return {path.name for path in (self.repository / "data").rglob("*") if path.is_file()}

    def write_config(self, databases: dict[str, str]) -> None:
        lines = [f'[repository]\nurl = "{self.repository}"\n']
        for name, url in databases.items():
            lines.append(f'[databases.{name}]\nurl = "{url}"\n')
        lines.append('[files]\nconfig = ["config/*.yml"]\nsecrets = [".env"]\n')
        (self.root / "lockstep.toml").write_text("\n".join(lines))


def make_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, photo BLOB);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL);
            CREATE TABLE alembic_version (version_num TEXT NOT NULL);
            INSERT INTO alembic_version VALUES ('3f2a9c');
            """
        )
        connection.executemany(
            "INSERT INTO customers (name, photo) VALUES (?, ?)", [(f"c{i}", bytes([i % 256]) * 50) for i in range(120)]
        )
        connection.executemany(
            "INSERT INTO orders (customer_id, total) VALUES (?, ?)", [(i % 120, i * 1.5) for i in range(345)]
        )


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A committed git project with a SQLite database, a config file and a secret, and an
    initialised repository next to it."""
    require_binary("git", "apt-get install git")
    root = tmp_path / "shop"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "app.py").write_text("print('v1')\n")
    (root / "config").mkdir()
    (root / "config" / "app.yml").write_text("currency: EUR\n")
    (root / ".env").write_text(f"STRIPE_KEY={SECRET}\n")
    (root / ".gitignore").write_text("app.db\n.env\n")
    make_sqlite(root / "app.db")
    current = Project(root, tmp_path / "repository")
    current.write_config({"main": "sqlite:///app.db"})
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    current.repo("init")
    return current


def sqlite_fingerprint(path: Path) -> dict[str, tuple[int, str]]:
    info = adapter_for("sqlite:///x").inspect(f"sqlite:///{path}", None)
    return {table.name: (table.rows, table.checksum) for table in info.tables}


def manifest_tables(manifest: dict[str, Any], database: str) -> dict[str, tuple[int, str]]:
    return {table["name"]: (table["rows"], table["checksum"]) for table in manifest["databases"][database]["tables"]}


def test_create_list_show_and_restore_round_trip(project: Project, tmp_path: Path) -> None:
    """The snapshot lists, shows by ID prefix, commit prefix and latest, and its dump restores
    to a database with the manifest's row counts and checksums."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("plain backup\n")
    assert project.repo("backup", str(other)).returncode == 0  # not a lockstep snapshot: list skips it

    created = project.create("-m", "before the price change", "--tag", "release")
    snapshot_id = created["id"]
    head = git(project.root, "rev-parse", "HEAD")
    assert created["code"]["commit"] == head
    assert created["code"]["branch"] == "main"
    assert created["code"]["dirty"] is False
    assert created["message"] == "before the price change"
    main = created["databases"]["main"]
    assert main["engine"] == "sqlite"
    assert main["path"] == "/databases/main.sqlite3"
    assert main["migration_version"] == "3f2a9c"
    assert manifest_tables(created, "main") == sqlite_fingerprint(project.root / "app.db")
    assert manifest_tables(created, "main")["orders"][0] == 345

    listed = json.loads(project.ok("snapshot", "list", "--json").out)
    assert [item["id"] for item in listed] == [snapshot_id]
    human = project.ok("snapshot", "list").out
    assert snapshot_id[:8] in human and "before the price change" in human and head[:9] in human

    for reference in (snapshot_id[:8], head[:7], "latest"):
        shown = json.loads(project.ok("snapshot", "show", reference, "--json").out)
        assert shown["id"] == snapshot_id
        assert manifest_tables(shown, "main")["customers"][0] == 120
    readable = project.ok("snapshot", "show", snapshot_id[:8]).out
    assert "orders: 345 rows" in readable and head in readable

    tags = json.loads(project.repo("snapshots", "--json").out)[-1]["tags"]
    assert tags[:4] == ["lockstep", "kind:manual", "env:default", f"commit:{head[:12]}"]
    assert "release" in tags

    dumped = project.repo("dump", snapshot_id, "/databases/main.sqlite3")
    assert dumped.returncode == 0, dumped.err
    assert "sha256" not in main and len(main["blobs_sha256"]) == 64  # checked by `snapshot verify`
    restored = tmp_path / "restored.sqlite3"
    restored.write_bytes(dumped.stdout)
    assert sqlite_fingerprint(restored) == manifest_tables(created, "main")

    stored_manifest = json.loads(project.repo("dump", snapshot_id, "/manifest.json").stdout)
    # --json says "default" for a snapshot without --env; the stored manifest keeps null.
    printed = {key: value for key, value in created.items() if key not in ("id", "short_id")}
    assert stored_manifest == {**printed, "environment": None} and created["environment"] == "default"
    assert project.repo("dump", snapshot_id, "/code/commit").stdout.decode().strip() == head
    assert project.repo("dump", snapshot_id, "/files/config/config/app.yml").stdout == b"currency: EUR\n"


def test_restic_lists_and_restores_the_snapshot(project: Project, tmp_path: Path, restic_binary: str) -> None:
    created = project.create("-m", "for restic")
    listing = run_restic(str(project.repository), ["ls", created["id"]])
    assert listing.returncode == 0, listing.err
    paths = listing.out.splitlines()
    assert "/manifest.json" in paths and "/databases/main.sqlite3" in paths and "/files/secrets/.env" in paths
    target = tmp_path / "restored"
    restored = run_restic(str(project.repository), ["restore", created["id"], "--target", str(target)])
    assert restored.returncode == 0, restored.err
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["databases"]["main"]["tables"] == created["databases"]["main"]["tables"]
    # restic alone can check the manifest's checksum of a dump: its blob IDs, in order, hashed.
    blob_list = restic_blob_list_sha256(str(project.repository), created["id"], "/databases/main.sqlite3")
    assert blob_list == created["databases"]["main"]["blobs_sha256"]
    assert sqlite_fingerprint(target / "databases" / "main.sqlite3") == manifest_tables(created, "main")
    assert (target / ".env").exists() is False
    assert (target / "files" / "secrets" / ".env").read_text() == f"STRIPE_KEY={SECRET}\n"
    checked = run_restic(str(project.repository), ["check", "--read-data"])
    assert checked.returncode == 0, checked.out + checked.err


def test_dirty_tree_is_refused_unless_allowed_and_then_its_diff_is_stored(project: Project) -> None:
    (project.root / "app.py").write_text("print('v2, not committed')\n")
    before = project.snapshot_ids()
    refused = project.lockstep("snapshot", "create")
    assert refused.returncode == 2
    assert "uncommitted changes" in refused.err and "--allow-dirty" in refused.err
    assert project.snapshot_ids() == before

    created = project.create("--allow-dirty")
    assert created["code"]["dirty"] is True
    assert created["code"]["path"] == "/code/uncommitted.diff"
    diff = project.repo("dump", created["id"], "/code/uncommitted.diff")
    assert diff.returncode == 0, diff.err
    assert b"+print('v2, not committed')" in diff.stdout
    assert b"-print('v1')" in diff.stdout


def test_commit_flag_commits_the_tree_and_records_that_commit(project: Project) -> None:
    (project.root / "app.py").write_text("print('v2')\n")
    (project.root / "added.txt").write_text("new file\n")
    before = git(project.root, "rev-parse", "HEAD")
    without_message = project.lockstep("snapshot", "create", "--commit")
    assert without_message.returncode == 2
    assert "-m" in without_message.err
    assert git(project.root, "rev-parse", "HEAD") == before

    created = project.create("--commit", "-m", "ship v2")
    head = git(project.root, "rev-parse", "HEAD")
    assert head != before
    assert git(project.root, "log", "-1", "--format=%s") == "ship v2"
    assert git(project.root, "status", "--porcelain") == ""
    assert created["code"]["commit"] == head and created["code"]["dirty"] is False


def test_allow_dirty_stores_untracked_files_but_not_secrets(project: Project, tmp_path: Path) -> None:
    """The output says the snapshot holds the uncommitted changes: an untracked file is one of
    them and comes back with --code; the secret .env (not git-ignored here) is stored under
    /files/secrets only, never in the code's diff."""
    (project.root / ".gitignore").write_text("app.db\n")
    (project.root / "views.py").write_text("print('new, untracked')\n")
    created = project.create("--allow-dirty", "-m", "dirty")
    diff = project.repo("dump", created["id"], "/code/uncommitted.diff")
    assert diff.returncode == 0, diff.err
    assert b"views.py" in diff.stdout and SECRET.encode() not in diff.stdout
    code = tmp_path / "code"
    project.ok("snapshot", "restore", created["short_id"], "--code", str(code))
    assert (code / "views.py").read_text() == "print('new, untracked')\n"
    assert not (code / ".env").exists()


def test_commit_flag_refuses_to_commit_a_secret(project: Project) -> None:
    """A .env listed under [files] secrets but not git-ignored went into history with `git add -A`:
    --commit refuses (usage error naming it), commits nothing and writes no snapshot."""
    (project.root / ".gitignore").write_text("app.db\n")
    (project.root / "app.py").write_text("print('v2')\n")
    before, snapshots = git(project.root, "rev-parse", "HEAD"), project.snapshot_ids()
    refused = project.lockstep("snapshot", "create", "--commit", "-m", "ship v2")
    assert refused.returncode == 2, refused.err
    assert ".env" in refused.err and ".gitignore" in refused.err
    assert git(project.root, "rev-parse", "HEAD") == before
    assert project.snapshot_ids() == snapshots
    assert git(project.root, "log", "--all", "--format=%H", "--", ".env") == ""


def test_commit_flag_leaves_no_commit_when_the_snapshot_fails(project: Project) -> None:
    """The commit used to be made before the databases were dumped: a missing database left a
    new commit, and a clean tree, although no snapshot recorded it. HEAD, the index and the
    work tree now stay as they were."""
    (project.root / "app.py").write_text("print('v2')\n")
    git(project.root, "add", "app.py")
    (project.root / "added.txt").write_text("new file\n")
    (project.root / "app.db").rename(project.root / "moved.db")
    before, status = git(project.root, "rev-parse", "HEAD"), git(project.root, "status", "--porcelain")
    failed = project.lockstep("snapshot", "create", "--commit", "-m", "ship v2")
    assert failed.returncode != 0 and "does not exist" in failed.err
    assert git(project.root, "rev-parse", "HEAD") == before
    assert git(project.root, "status", "--porcelain") == status
    assert project.snapshot_ids() == []


def test_a_failing_database_writes_no_snapshot_and_leaves_no_packs(project: Project) -> None:
    project.create("-m", "a good one first")
    before_snapshots, before_packs = project.snapshot_ids(), project.packs()
    # More than one pack (16 MiB) of new data in the good database, dumped before the failing
    # one: packs are uploaded by then, and the failure must remove them.
    with sqlite3.connect(project.root / "app.db") as connection:
        connection.execute("CREATE TABLE blobs (data BLOB)")
        connection.executemany("INSERT INTO blobs VALUES (?)", [(os.urandom(1024 * 1024),) for _ in range(20)])
    project.write_config({"main": "sqlite:///app.db", "missing": f"sqlite:///{project.root / 'gone.db'}"})
    failed = project.lockstep("snapshot", "create", "--allow-dirty")
    assert failed.returncode == 15, failed.err
    assert "missing" in failed.err and "does not exist" in failed.err
    assert project.snapshot_ids() == before_snapshots
    assert project.packs() == before_packs
    assert list((project.repository / "locks").iterdir()) == []


def test_secret_content_is_never_printed_nor_in_the_manifest(project: Project) -> None:
    outputs = [
        project.ok("snapshot", "create", "-m", "one"),
        project.ok("snapshot", "create", "--json"),
        project.ok("snapshot", "list"),
        project.ok("snapshot", "list", "--json"),
        project.ok("snapshot", "show", "latest"),
        project.ok("snapshot", "show", "latest", "--json"),
        project.ok("--debug", "snapshot", "show", "latest"),
    ]
    for output in outputs:
        assert SECRET not in output.out and SECRET not in output.err
    latest = json.loads(outputs[-2].out)
    secret = next(file for file in latest["files"] if file["kind"] == "secret")
    assert secret == {
        "path": "/files/secrets/.env",
        "kind": "secret",
        "size": len(f"STRIPE_KEY={SECRET}\n"),
        "sha256": hashlib.sha256(f"STRIPE_KEY={SECRET}\n".encode()).hexdigest(),
    }
    stored = project.repo("dump", latest["id"], "/manifest.json").stdout
    assert SECRET.encode() not in stored
    assert project.repo("dump", latest["id"], "/files/secrets/.env").stdout == f"STRIPE_KEY={SECRET}\n".encode()


def test_symlinked_config_files_are_recorded_under_their_own_names(project: Project, tmp_path: Path) -> None:
    """config/link.yml -> /elsewhere/shared.yml was stored (and restored) as elsewhere/shared.yml,
    and config/alias.yml -> app.yml was dropped as a duplicate of app.yml. Each is recorded under
    its own path now, with its target's content."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shared.yml").write_text("shared: true\n")
    (project.root / "config" / "link.yml").symlink_to(elsewhere / "shared.yml")
    (project.root / "config" / "alias.yml").symlink_to("app.yml")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "links")
    created = project.create("-m", "links")
    assert sorted(file["path"] for file in created["files"] if file["kind"] == "config") == [
        "/files/config/config/alias.yml",
        "/files/config/config/app.yml",
        "/files/config/config/link.yml",
    ]
    files = tmp_path / "restored"
    project.ok("snapshot", "restore", created["short_id"], "--files", str(files))
    assert (files / "config" / "link.yml").read_text() == "shared: true\n"
    assert (files / "config" / "alias.yml").read_text() == "currency: EUR\n"
    assert not (files / "elsewhere").exists()


def test_reserved_tags_are_refused(project: Project) -> None:
    """`--tag commit:deadbeef` made `snapshot show deadbeef` find this snapshot as if it recorded
    commit deadbeef; env: and kind: would file it under another environment or kind. Every
    prefix lockstep writes is reserved: `release:7` made a rollback restore release 7's directory
    from this snapshot, `deploy:` put it among a deploy's snapshots for retention."""
    head = git(project.root, "rev-parse", "HEAD")
    reserved = (
        "commit:deadbeef",
        "env:production",
        "kind:pre-deploy",
        "lockstep",
        "release:20250101-120000",
        "deploy:d1",
        "restore-of:1a2b3c4d",
        "restores:1a2b3c4d",
    )
    for tag in reserved:
        refused = project.lockstep("snapshot", "create", "--tag", tag)
        assert refused.returncode == 2, refused.err
        assert repr(tag) in refused.err and "reserved" in refused.err
    assert project.snapshot_ids() == []
    created = project.create("--tag", "release-candidate", "--tag", "committed", "--tag", "deployed")
    assert created["tags"] == ["release-candidate", "committed", "deployed"]
    assert git(project.root, "rev-parse", "HEAD") == head


def test_comma_separated_tags_are_separate_tags_as_in_restic(project: Project) -> None:
    """`--tag a,b` was stored as the one tag "a,b", so `restic snapshots --tag a` missed the
    snapshot; restic's own `backup --tag a,b` writes two tags. A reserved tag hidden in a list
    is still refused."""
    refused = project.lockstep("snapshot", "create", "--tag", "weekly,env:production")
    assert refused.returncode == 2, refused.err
    assert "'env:production'" in refused.err and "reserved" in refused.err
    created = project.create("--tag", "weekly, audit", "--tag", "eu")
    assert created["tags"][-3:] == ["weekly", "audit", "eu"]
    (stored,) = json.loads(run_restic(str(project.repository), ["snapshots", "--json", "--tag", "audit,weekly"]).out)
    assert stored["id"] == created["id"]
    assert stored["tags"][-3:] == ["weekly", "audit", "eu"]
    assert "weekly, audit" not in stored["tags"]


def test_unknown_and_ambiguous_references_exit_13(project: Project) -> None:
    first = project.create("-m", "one")
    second = project.create("-m", "two")
    head = git(project.root, "rev-parse", "HEAD")
    ambiguous = project.lockstep("snapshot", "show", head[:8])
    assert ambiguous.returncode == 13
    assert first["short_id"] in ambiguous.err and second["short_id"] in ambiguous.err
    unknown = project.lockstep("snapshot", "show", "zzzz")
    assert unknown.returncode == 13
    assert "no lockstep snapshot matches" in unknown.err
    by_id = json.loads(project.ok("snapshot", "show", second["id"][:10], "--json").out)
    assert by_id["message"] == "two"


def test_a_long_commit_reference_must_match_the_whole_commit(project: Project) -> None:
    """The commit: tag keeps 12 digits, and only they were compared: HEAD's first 12 digits
    followed by anything named this snapshot. A longer reference is checked against the
    manifest's full commit (show, diff, verify and restore alike)."""
    created = project.create("-m", "one")
    head = git(project.root, "rev-parse", "HEAD")
    assert json.loads(project.ok("snapshot", "show", head, "--json").out)["id"] == created["id"]
    assert json.loads(project.ok("snapshot", "show", head[:16].upper(), "--json").out)["id"] == created["id"]
    other = head[:12] + ("0" if head[12] != "0" else "1") + head[13:]
    for command in (["show"], ["diff"], ["verify"], ["restore", "--files", str(project.root / "unused")]):
        wrong = project.lockstep("snapshot", command[0], other, *command[1:])
        assert wrong.returncode == 13, (command, wrong.err)
        assert "no lockstep snapshot matches" in wrong.err
    assert not (project.root / "unused").exists()


def test_a_relative_sqlite_to_url_is_shown_as_the_file_it_wrote(project: Project) -> None:
    """`--to sqlite:///tmp/copy.db` is tmp/copy.db below where lockstep runs (SQLAlchemy's rule), and
    the restore said "restored into sqlite:///tmp/copy.db", which reads as /tmp/copy.db: the copy
    looked lost. The output and --json now name the absolute file."""
    project.create("-m", "one")
    (project.root / "copies").mkdir()
    written = project.root / "copies" / "copy.db"
    text = project.ok("snapshot", "restore", "latest", "--database", "main", "--to", "sqlite:///copies/copy.db")
    assert f"restored into sqlite:///{written} and verified" in text.out, text.out
    assert sqlite_fingerprint(written) == sqlite_fingerprint(project.root / "app.db")
    document = json.loads(
        project.ok(
            "snapshot", "restore", "latest", "--json", "--database", "main", "--to", "sqlite:///copies/copy2.db"
        ).out
    )
    assert document["databases"][0]["target"] == f"sqlite:///{project.root / 'copies' / 'copy2.db'}"
    assert (project.root / "copies" / "copy2.db").is_file()


# --- PostgreSQL --------------------------------------------------------------------------


def test_a_restore_writes_nothing_when_its_lock_recheck_finds_a_competitor(project: Project, tmp_path: Path) -> None:
    """The restore's second look for competing locks runs in the background while it finds the
    snapshot (0.2 s less before the restore begins). A prune's exclusive lock written just before
    that look (the restore waits there for the test) still stops the restore before it writes
    anything: exit 4 naming the competitor, and no target database."""
    from tests.repository.test_locks import write_lock

    project.create("-m", "one")
    (project.root / "copies").mkdir()
    go = tmp_path / "go-ahead"
    environment = {**project.env, WAIT_AT_VARIABLE: "lock recheck", WAIT_FOR_VARIABLE: str(go)}
    arguments = ["snapshot", "restore", "latest", "--database", "main", "--to", "sqlite:///copies/copy.db"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run_lockstep, arguments, cwd=project.root, env=environment)
        try:
            arrived = go.with_name(go.name + WAITING_SUFFIX)
            deadline = time.monotonic() + 120
            while not arrived.exists():
                assert not running.done(), running.result().err
                assert time.monotonic() < deadline, "the restore never reached its lock re-check"
                time.sleep(0.02)
            repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
            try:
                write_lock(repository, pid=1, hostname="elsewhere.example", exclusive=True)
            finally:
                repository.close()
        finally:
            go.touch()  # the restore must not wait for a go-ahead that never comes
        result = running.result(timeout=120)
    assert result.returncode == ExitCode.LOCKED, result.err
    assert "is locked" in result.err and "elsewhere.example" in result.err, result.err
    assert not (project.root / "copies" / "copy.db").exists()


@pytest.fixture
def postgresql() -> DatabaseAdapter:
    require_binary("pg_dump", "apt-get install postgresql-client")
    require_binary("pg_restore", "apt-get install postgresql-client")
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.Error as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")
    return adapter_for(POSTGRESQL_SERVER)


@pytest.fixture
def scratch_databases(postgresql: DatabaseAdapter) -> Iterator[list[str]]:
    """Scratch databases the test creates; every one is dropped afterwards."""
    created: list[str] = []
    yield created
    for url in created:
        postgresql.drop_database(url, None)


def execute_postgresql(url: str, statements: str) -> None:
    import psycopg

    database = ServerLocation.parse(url).database
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database) as connection:
        connection.execute(statements)


def test_postgresql_snapshot_restores_to_the_manifest_checksums(
    project: Project, postgresql: DatabaseAdapter, scratch_databases: list[str]
) -> None:
    source = postgresql.create_scratch(POSTGRESQL_SERVER, None)
    scratch_databases.append(source)
    execute_postgresql(
        source,
        """
        CREATE TABLE customers (id serial PRIMARY KEY, name text, photo bytea);
        INSERT INTO customers (name, photo) SELECT 'c' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 250) g;
        CREATE TABLE schema_migrations (version text PRIMARY KEY);
        INSERT INTO schema_migrations VALUES ('20260101000000');
        """,
    )
    project.write_config({"shop": source})
    created = project.create("--allow-dirty", "-m", "postgresql")
    shop = created["databases"]["shop"]
    assert shop["engine"] == "postgresql" and shop["path"] == "/databases/shop.dump"
    assert shop["dump_format"] == "postgresql-custom"
    assert manifest_tables(created, "shop")["customers"][0] == 250
    assert shop["migration_version"] == "20260101000000"

    dumped = project.repo("dump", created["id"], "/databases/shop.dump")
    assert dumped.returncode == 0, dumped.err
    assert "sha256" not in shop and len(shop["blobs_sha256"]) == 64
    target = postgresql.create_scratch(POSTGRESQL_SERVER, None)
    scratch_databases.append(target)
    import io

    postgresql.restore(target, None, io.BytesIO(dumped.stdout), create=False)
    restored = postgresql.inspect(target, None)
    assert {table.name: (table.rows, table.checksum) for table in restored.tables} == manifest_tables(created, "shop")


def test_a_missing_postgresql_database_fails_with_exit_15(project: Project, postgresql: DatabaseAdapter) -> None:
    before_snapshots, before_packs = project.snapshot_ids(), project.packs()
    project.write_config(
        {"main": "sqlite:///app.db", "shop": "postgresql://postgres@127.0.0.1:5432/lockstep_no_such_database"}
    )
    failed = project.lockstep("snapshot", "create", "--allow-dirty")
    assert failed.returncode == 15, failed.err
    assert "shop" in failed.err and "no snapshot was written" in failed.err
    assert project.snapshot_ids() == before_snapshots
    assert project.packs() == before_packs


def test_release_directory_code_and_environment_tags(tmp_path: Path) -> None:
    """A release directory is stored whole under /code/release; --env names the environment in
    the tags and the manifest, and `list --env` filters on it."""
    root = tmp_path / "site"
    (root / "release" / "static").mkdir(parents=True)
    (root / "release" / "index.php").write_text("<?php echo 'v7';\n")
    (root / "release" / "static" / "app.css").write_text("body {}\n")
    (root / "config").mkdir()
    (root / "config" / "app.yml").write_text("debug: false\n")
    (root / ".env").write_text(f"KEY={SECRET}\n")
    project = Project(root, tmp_path / "repository")
    project.write_config({})
    with (root / "lockstep.toml").open("a") as config:
        config.write('\n[code]\nkind = "release-directory"\npath = "release"\n\n[environments.staging]\n')
    assert project.repo("init").returncode == 0

    staging = project.create("--env", "staging", "-m", "v7")
    release = root / "release"

    def mode(path: Path) -> str:
        return f"{path.stat().st_mode & 0o7777:04o}"

    index_sha256 = hashlib.sha256(b"<?php echo 'v7';\n").hexdigest()
    css_sha256 = hashlib.sha256(b"body {}\n").hexdigest()
    listing = (
        f"index.php\tfile\t{mode(release / 'index.php')}\t17\t{index_sha256}\t\n"
        f"static\tdir\t{mode(release / 'static')}\t\t\t\n"
        f"static/app.css\tfile\t{mode(release / 'static' / 'app.css')}\t8\t{css_sha256}\t\n"
    ).encode()
    assert staging["code"] == {
        "kind": "release-directory",
        "commit": None,
        "branch": None,
        "author": None,
        "dirty": False,
        "path": "/code/release",
        "size": len("<?php echo 'v7';\n") + len("body {}\n"),
        "tree_sha256": hashlib.sha256(listing).hexdigest(),
        "listing": "/code/release.listing",
    }
    assert project.repo("dump", staging["id"], "/code/release.listing").stdout == listing
    assert staging["environment"] == "staging" and staging["databases"] == {}
    project.create("-m", "default environment")
    listing = project.repo("ls", staging["id"])
    assert "/code/release/static/app.css" in listing.out.splitlines()
    assert project.repo("dump", staging["id"], "/code/release/index.php").stdout == b"<?php echo 'v7';\n"
    tags = next(s["tags"] for s in json.loads(project.repo("snapshots", "--json").out) if s["id"] == staging["id"])
    assert tags == ["lockstep", "kind:manual", "env:staging"]  # no commit to tag
    only_staging = json.loads(project.ok("snapshot", "list", "--env", "staging", "--json").out)
    assert [item["id"] for item in only_staging] == [staging["id"]]
    assert len(json.loads(project.ok("snapshot", "list", "--json").out)) == 2


def test_a_release_directory_behind_a_current_symlink_is_stored_whole(tmp_path: Path) -> None:
    """Capistrano's layout: [code] path = "current", a symlink to releases/<timestamp>. The
    snapshot stored the symlink itself (code 0 B) and `restore --code` then failed with exit 12
    ("not a directory"): the code was silently missing from every snapshot. The release it points
    at is stored, and comes back as a directory."""
    root = tmp_path / "site"
    release = root / "releases" / "20261123070000"
    release.mkdir(parents=True)
    (release / "index.php").write_text("<?php echo 'v7';\n")
    (root / "current").symlink_to(Path("releases") / "20261123070000")
    (root / "config").mkdir()
    (root / "config" / "app.yml").write_text("debug: false\n")
    (root / ".env").write_text(f"KEY={SECRET}\n")
    project = Project(root, tmp_path / "repository")
    project.write_config({})
    with (root / "lockstep.toml").open("a") as config:
        config.write('\n[code]\nkind = "release-directory"\npath = "current"\n')
    assert project.repo("init").returncode == 0

    created = project.create("-m", "v7")
    assert created["code"]["size"] == len("<?php echo 'v7';\n")
    assert project.repo("dump", created["id"], "/code/release/index.php").stdout == b"<?php echo 'v7';\n"
    target = tmp_path / "restored"
    project.ok("snapshot", "restore", created["short_id"], "--code", str(target))
    assert (target / "index.php").read_text() == "<?php echo 'v7';\n"


def test_snapshot_show_names_the_release_current_pointed_to(tmp_path: Path) -> None:
    """With [code] path = "current" -> releases/<timestamp>, the manifest did not say which
    release was stored: after the next deploy moved `current`, nothing told them apart."""
    root = tmp_path / "site"
    for name in ("20261123070000", "20261124070000"):
        (root / "releases" / name).mkdir(parents=True)
        (root / "releases" / name / "index.php").write_text(f"<?php echo '{name}';\n")
    (root / "current").symlink_to(Path("releases") / "20261123070000")
    project = Project(root, tmp_path / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "release-directory"\npath = "current"\n'
    )
    assert project.repo("init").returncode == 0

    first = project.create("-m", "first")
    (root / "current").unlink()
    (root / "current").symlink_to(Path("releases") / "20261124070000")
    second = project.create("-m", "second")
    assert first["code"]["release"] == "20261123070000" and second["code"]["release"] == "20261124070000"
    shown = project.ok("snapshot", "show", first["short_id"]).out
    assert "code         release-directory at /code/release, 29 B, release 20261123070000" in shown, shown
    document = json.loads(project.ok("snapshot", "show", second["short_id"], "--json").out)
    assert document["code"]["release"] == "20261124070000"


def test_commit_flag_in_a_repository_without_commits_makes_the_first_commit(tmp_path: Path) -> None:
    """`git init`, then `snapshot create --commit -m ...`: it exited 15 (SOURCE) because HEAD
    could not be read, and without --commit the error (exit 15) did not mention --commit."""
    require_binary("git", "apt-get install git")
    root = tmp_path / "app"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "app.py").write_text("print('v1')\n")
    (root / ".env").write_text(f"STRIPE_KEY={SECRET}\n")
    (root / ".gitignore").write_text(".env\n")
    project = Project(root, tmp_path / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "git"\npath = "."\n\n'
        '[files]\nsecrets = [".env"]\n'
    )
    assert project.repo("init").returncode == 0

    refused = project.lockstep("snapshot", "create", "-m", "no commit yet")
    assert refused.returncode == 2, refused.err
    assert "has no commits yet" in refused.err and "make a first commit" in refused.err
    assert "--commit -m MESSAGE" in refused.err
    assert project.snapshot_ids() == []

    created = project.create("--commit", "-m", "first")
    head = git(root, "rev-parse", "HEAD")
    assert created["code"]["commit"] == head and created["code"]["branch"] == "main"
    assert git(root, "rev-list", "--count", "HEAD") == "1" and git(root, "log", "-1", "--format=%s") == "first"
    assert git(root, "ls-tree", "--name-only", "HEAD").split() == [".gitignore", "app.py", "lockstep.toml"]
    assert git(root, "status", "--porcelain") == ""
    assert project.ok("snapshot", "create", "-m", "again").returncode == 0


def test_commit_flag_with_nothing_to_commit_in_a_new_repository_is_refused(tmp_path: Path) -> None:
    require_binary("git", "apt-get install git")
    root = tmp_path / "app"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    project = Project(root, tmp_path / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "git"\npath = "."\n'
    )
    (root / ".gitignore").write_text("*\n")  # nothing git would take
    assert project.repo("init").returncode == 0
    refused = project.lockstep("snapshot", "create", "--commit", "-m", "first")
    assert refused.returncode == 2, refused.err
    assert "nothing to commit" in refused.err
    assert git(root, "rev-list", "--all") == ""


def test_a_code_path_that_is_no_git_work_tree_is_still_a_source_error(tmp_path: Path) -> None:
    require_binary("git", "apt-get install git")
    root = tmp_path / "app"
    root.mkdir()
    (root / "app.py").write_text("print('v1')\n")
    project = Project(root, tmp_path / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "git"\npath = "."\n'
    )
    assert project.repo("init").returncode == 0
    for arguments in ((), ("--commit", "-m", "first")):
        failed = project.lockstep("snapshot", "create", *arguments)
        assert failed.returncode == 15, failed.err
        assert "not a git repository" in failed.err


def test_a_release_directory_holding_the_project_leaves_lockstep_s_own_files_out(tmp_path: Path) -> None:
    """Without git, `lockstep init` says to set kind = "release-directory", whose path defaults
    to the project's directory, where the repository (.lockstep/repository), the state directory,
    the SQLite database and .env also live. Each snapshot stored the repository inside itself (so
    every snapshot was bigger than the last), the live database file beside its dump and the
    secret as code. The code is the release's own files now, as for git."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.php").write_text("<?php echo 'v7';\n")
    (root / "config").mkdir()
    (root / "config" / "app.yml").write_text("debug: false\n")
    (root / ".env").write_text(f"KEY={SECRET}\n")
    make_sqlite(root / "app.db")
    (root / ".lockstep" / "state" / "production" / "logs").mkdir(parents=True)
    (root / ".lockstep" / "state" / "production" / "logs" / "web.log").write_text("log line\n")
    project = Project(root, root / ".lockstep" / "repository")
    project.write_config({"main": "sqlite:///app.db"})
    with (root / "lockstep.toml").open("a") as config:
        config.write('\n[code]\nkind = "release-directory"\n')
    assert project.repo("init").returncode == 0

    first = project.create("-m", "one")
    second = project.create("-m", "two")
    assert first["code"]["size"] == second["code"]["size"]
    listed = project.repo("ls", second["id"]).out.splitlines()
    code = [line for line in listed if line.startswith("/code/release/")]
    assert "/code/release/index.php" in code and "/code/release/config/app.yml" in code
    assert "/code/release/lockstep.toml" in code
    for left_out in (".lockstep", "app.db", ".env"):
        assert f"/code/release/{left_out}" not in code, code
    assert "/files/secrets/.env" in listed and "/databases/main.sqlite3" in listed
    target = tmp_path / "restored"
    project.ok("snapshot", "restore", second["short_id"], "--code", str(target))
    assert (target / "index.php").read_text() == "<?php echo 'v7';\n"
    assert not (target / ".lockstep").exists() and not (target / ".env").exists()


def test_directories_holding_left_out_files_keep_their_own_modes_and_times(tmp_path: Path, restic_binary: str) -> None:
    """The release directory and a directory below it each hold something the snapshot stores
    apart (the repository, a secret), so their entries are stored one by one. Both came back
    mode 0700 with the snapshot's time: a release restored by lockstep or by restic was closed to
    the web server's user. They keep their own mode and modification time now, as the
    directories stored whole always did."""
    root = tmp_path / "site"
    (root / "config").mkdir(parents=True)
    (root / "index.php").write_text("<?php echo 'v9';\n")
    (root / "config" / "app.yml").write_text("debug: false\n")
    (root / "config" / ".env").write_text(f"KEY={SECRET}\n")
    project = Project(root, root / ".lockstep" / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "release-directory"\n\n'
        '[files]\nsecrets = ["config/.env"]\n'
    )
    assert project.repo("init").returncode == 0
    expected = {root: (0o755, 1_600_000_000), root / "config": (0o750, 1_650_000_000)}
    for directory, (mode, mtime) in expected.items():
        directory.chmod(mode)
        os.utime(directory, (mtime, mtime))
    snapshot = project.create("-m", "modes")

    by_lockstep = tmp_path / "by-lockstep"
    project.ok("snapshot", "restore", snapshot["short_id"], "--code", str(by_lockstep))
    by_restic = tmp_path / "by-restic"
    restored_by_restic = run_restic(str(project.repository), ["restore", snapshot["id"], "--target", str(by_restic)])
    assert restored_by_restic.returncode == 0, restored_by_restic.err
    # `--code DIR` fills the directory it is given, as `restic restore SNAPSHOT:/code/release`
    # would: only what lies below the release's own directory is compared there.
    for restored, directories in ((by_lockstep, [root / "config"]), (by_restic / "code" / "release", [*expected])):
        assert not (restored / "config" / ".env").exists() and not (restored / ".lockstep").exists()
        assert (restored / "config" / "app.yml").read_text() == "debug: false\n"
        for directory in directories:
            mode, mtime = expected[directory]
            info = (restored / directory.relative_to(root)).stat()
            assert (oct(info.st_mode & 0o7777), int(info.st_mtime)) == (oct(mode), mtime), (restored, directory)


def test_a_release_directory_snapshot_reports_the_size_of_its_files(tmp_path: Path) -> None:
    """A snapshot of a release directory alone said "0 B in total" (and so did `snapshot list`):
    only dumps and config files were counted. The manifest records the release's bytes and every
    size shown includes them."""
    root = tmp_path / "site"
    (root / "release" / "static").mkdir(parents=True)
    (root / "release" / "index.php").write_bytes(b"<?php echo 'v8';\n" * 100)
    (root / "release" / "static" / "app.css").write_bytes(b"x" * 3000)
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{tmp_path / "repository"}"\n\n[code]\nkind = "release-directory"\npath = "release"\n'
    )
    project = Project(root, tmp_path / "repository")
    assert project.repo("init").returncode == 0
    size = 1700 + 3000

    created = project.create("-m", "v8")
    assert created["code"]["size"] == size
    printed = project.ok("snapshot", "create", "-m", "again").out
    assert "code (4.59 KiB); no databases; 0 files; 4.59 KiB in total" in printed, printed
    listed = project.ok("snapshot", "list").out
    assert "0 B" not in listed and listed.count("4.59 KiB") == 2, listed
    shown = project.ok("snapshot", "show", "latest").out
    assert "code         release-directory at /code/release, 4.59 KiB" in shown


def add_staging_environment(project: Project) -> None:
    """A `staging` environment with a database of its own (staging.db, one table), committed."""
    with (project.root / "lockstep.toml").open("a") as config:
        config.write('\n[environments.staging.databases.main]\nurl = "sqlite:///staging.db"\n')
    with sqlite3.connect(project.root / "staging.db") as connection:
        connection.execute("CREATE TABLE staging_only (id INTEGER PRIMARY KEY)")
    (project.root / ".gitignore").write_text("app.db\nstaging.db\n.env\n")
    git(project.root, "commit", "-q", "-am", "staging")


def test_references_resolve_within_the_environment(project: Project) -> None:
    """`latest` and ID prefixes pick among the environment's own snapshots (default without
    --env): a restore writes into that environment's databases, so another environment's
    snapshot must never be picked by accident; naming one says which --env to use."""
    add_staging_environment(project)
    before = sqlite_fingerprint(project.root / "app.db")
    staging = project.create("--env", "staging", "-m", "staging data")

    nothing = project.lockstep("snapshot", "restore", "latest", "--yes")
    assert nothing.returncode == 13, nothing.err
    assert "no lockstep snapshots of environment 'default' yet (there are of staging)" in nothing.err
    by_prefix = project.lockstep("snapshot", "restore", staging["id"][:10], "--yes")
    assert by_prefix.returncode == 13, by_prefix.err
    assert "matches no snapshot of environment 'default', only of staging" in by_prefix.err
    assert "--env staging" in by_prefix.err
    assert project.lockstep("snapshot", "diff", "latest").returncode == 13
    assert sqlite_fingerprint(project.root / "app.db") == before

    default = project.create("-m", "default data")
    shown = json.loads(project.ok("snapshot", "show", "latest", "--env", "staging", "--json").out)
    assert shown["id"] == staging["id"]
    assert json.loads(project.ok("snapshot", "show", "latest", "--json").out)["id"] == default["id"]
    project.ok("snapshot", "restore", "latest", "--env", "staging", "--yes")
    assert set(sqlite_fingerprint(project.root / "staging.db")) == {"staging_only"}
    assert sqlite_fingerprint(project.root / "app.db") == before


def test_references_without_env_see_the_default_environment_s_deploy_snapshots(project: Project) -> None:
    """A deploy's snapshots carry its environment's name (production, the default), `snapshot
    create` without --env "default"; without an [environments.production] table both are of the
    same databases. `snapshot show latest` (and diff, verify, restore) said "no lockstep snapshots of
    environment 'default' yet (there are of production)" right after a newcomer's first deploy.
    Another environment's snapshots stay out of reach without --env."""
    add_staging_environment(project)
    production = project.create("--env", "production", "-m", "as a deploy to production takes it")
    project.create("--env", "staging", "-m", "staging data")

    shown = json.loads(project.ok("snapshot", "show", "latest", "--json").out)
    assert shown["id"] == production["id"]
    assert json.loads(project.ok("snapshot", "show", production["id"][:10], "--json").out)["id"] == production["id"]
    assert project.lockstep("snapshot", "diff", "latest").returncode == 0
    default = project.create("-m", "default data")
    assert (
        json.loads(project.ok("snapshot", "show", "latest", "--env", "production", "--json").out)["id"] == default["id"]
    )


def test_lockstep_s_own_files_in_the_work_tree_do_not_make_it_dirty(project: Project, tmp_path: Path) -> None:
    """As `lockstep init` sets a project up: the repository at .lockstep/repository and the state
    directory at .lockstep/state inside the work tree, and a SQLite database there too, none of
    them git-ignored. `snapshot create` refused the first snapshot ("uncommitted changes" were
    lockstep's own repository), and with --allow-dirty stored the agent's logs and releases in the
    code's diff. A real change still counts, and its diff holds only that change."""
    (project.root / ".gitignore").write_text(".env\n")
    git(project.root, "add", ".gitignore")
    git(project.root, "rm", "-q", "--cached", "--ignore-unmatch", "app.db")
    git(project.root, "commit", "-q", "-m", "app.db is not ignored")
    (project.root / "lockstep.toml").write_text(
        '[repository]\nurl = "local:.lockstep/repository"\n\n[databases.main]\nurl = "sqlite:///app.db"\n'
    )
    git(project.root, "commit", "-q", "-am", "the repository inside the work tree")
    project.repository = project.root / ".lockstep" / "repository"
    assert project.repo("init").returncode == 0
    log = project.root / ".lockstep" / "state" / "production" / "logs" / "web.log"
    log.parent.mkdir(parents=True)
    log.write_text("agent log line\n")
    assert git(project.root, "status", "--porcelain")  # git does see them

    created = project.create("-m", "first")
    assert created["code"]["dirty"] is False

    (project.root / "views.py").write_text("print('new')\n")
    refused = project.lockstep("snapshot", "create")
    assert refused.returncode == 2 and "uncommitted changes" in refused.err
    dirty = project.create("--allow-dirty")
    diff = project.repo("dump", dirty["id"], "/code/uncommitted.diff")
    assert diff.returncode == 0, diff.err
    assert b"views.py" in diff.stdout
    assert b".lockstep" not in diff.stdout and b"app.db" not in diff.stdout


def test_snapshot_list_on_a_narrow_terminal_keeps_ids_and_messages_whole(project: Project) -> None:
    """At 80 columns the table did not fit: rich cut the IDs to "afba…" (what every other command
    takes) and dropped the message, kind and environment columns. Too narrow a terminal gets one
    block per snapshot instead, every value whole; a wide one still gets the table."""
    created = project.create("-m", "before the migration to the new schema")
    narrow = run_lockstep(["snapshot", "list"], cwd=project.root, env={**project.env, "COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.err
    assert all(len(line) <= 80 for line in narrow.out.splitlines()), narrow.out
    first = narrow.out.splitlines()[0]
    assert first.startswith(created["short_id"] + "  ") and "manual" in first and "default" in first
    assert "  message: before the migration to the new schema" in narrow.out
    assert "  verified: never" in narrow.out
    wide = project.ok("snapshot", "list").out  # COLUMNS=200
    assert "┃ Message" in wide and created["short_id"] in wide and "message:" not in wide


def test_a_snapshot_without_env_is_of_environment_default_in_every_json_output(project: Project) -> None:
    """`snapshot list --json` and `show --json` said `"environment": null` for a snapshot taken
    without --env, where their text and `backup --json` / `forget --json` say "default"."""
    created = project.create("-m", "without --env")
    backup = json.loads(project.ok("--json", "backup").out)
    assert created["environment"] == "default" and backup["environment"] == "default"
    listed = json.loads(project.ok("snapshot", "list", "--json").out)
    assert [item["environment"] for item in listed] == ["default", "default"]
    shown = json.loads(project.ok("snapshot", "show", created["short_id"], "--json").out)
    assert shown["environment"] == "default"
    assert "environment  default" in project.ok("snapshot", "show", created["short_id"]).out
    forget = json.loads(project.ok("snapshot", "forget", "--dry-run", "--json").out)
    assert {group["environment"] for group in forget["groups"]} == {"default"}


def test_brackets_in_a_message_print_as_written(project: Project) -> None:
    """rich read "[...]" in a snapshot message as markup: "[/]" made `snapshot list` fail with an
    internal error (MarkupError), and "[bold]" vanished from the table."""
    message = "fix [/] and [bold]x[/bold] [WIP]"
    project.create("-m", message)
    listed = project.ok("snapshot", "list")
    assert message in listed.out, listed.out
    shown = project.ok("snapshot", "show", "latest")
    assert message in shown.out, shown.out
