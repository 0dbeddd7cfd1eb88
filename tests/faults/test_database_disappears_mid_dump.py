"""A PostgreSQL database dropped while `lockstep snapshot create` dumps it: exit 15 with a message
naming the database, no snapshot, and none of the packs the snapshot had already uploaded.

To drop it deterministically *during* the dump, a transaction holds an ACCESS EXCLUSIVE lock on a
table: pg_dump connects, reads the catalog, then waits for its ACCESS SHARE lock on that table.
Once pg_stat_activity shows pg_dump waiting, `DROP DATABASE ... WITH (FORCE)` terminates every
session of the database (pg_dump's included) and removes it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, missing, require_binary, run_lockstep

WAIT_SECONDS = 120


def admin_connection() -> object:
    import psycopg

    try:
        return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True, connect_timeout=5)
    except psycopg.Error as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")
        raise


@pytest.fixture
def doomed_database() -> Iterator[str]:
    """A uniquely named database with a table of ~50k rows; dropped afterwards if still there."""
    require_binary("pg_dump", "apt-get install postgresql-client")
    import psycopg

    name = f"lockstep_fault_{uuid.uuid4().hex[:10]}"
    admin = admin_connection()
    assert isinstance(admin, psycopg.Connection)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname=name) as connection:
            connection.execute(
                "CREATE TABLE events (id bigserial PRIMARY KEY, payload text);"
                "INSERT INTO events (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 50000) g;"
            )
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def packs(repository: Path) -> set[str]:
    return {path.name for path in (repository / "data").rglob("*") if path.is_file()}


def snapshot_ids(repository: Path, environment: dict[str, str]) -> list[str]:
    listed = run_lockstep(["repo", "snapshots", "--json", "-r", str(repository)], env=environment)
    assert listed.returncode == 0, listed.err
    return [snapshot["id"] for snapshot in json.loads(listed.out)]


def test_database_dropped_during_the_dump_fails_the_snapshot_cleanly(tmp_path: Path, doomed_database: str) -> None:
    import psycopg

    root = tmp_path / "project"
    root.mkdir()
    # A SQLite database with > 16 MiB of fresh data comes first: its packs are uploaded before
    # PostgreSQL is dumped, so the failure has real packs to take back.
    with sqlite3.connect(root / "files.db") as connection:
        connection.execute("CREATE TABLE blobs (data BLOB)")
        connection.executemany("INSERT INTO blobs VALUES (?)", [(os.urandom(1024 * 1024),) for _ in range(20)])
    repository = root / "repository"
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{repository}"\n\n'
        f'[databases.files]\nurl = "sqlite:///{root / "files.db"}"\n\n'
        f'[databases.events]\nurl = "postgresql://postgres@127.0.0.1:5432/{doomed_database}"\n'
    )
    environment = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "LOCKSTEP_SCRYPT_N": "1024"}
    assert run_lockstep(["repo", "init", "-r", str(repository)], env=environment).returncode == 0
    before_packs = packs(repository)

    admin = admin_connection()
    assert isinstance(admin, psycopg.Connection)
    locker = psycopg.connect(host="127.0.0.1", user="postgres", dbname=doomed_database)
    process = None
    try:
        locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        process = subprocess.Popen(
            [sys.executable, "-m", "lockstep", "snapshot", "create"],
            cwd=root,
            env={**os.environ, **environment},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pg_dump' "
                "AND wait_event_type = 'Lock'",
                (doomed_database,),
            ).fetchone()
            if waiting and waiting[0]:
                break
            assert process.poll() is None, f"lockstep ended before pg_dump waited: {process.communicate()}"
            assert time.monotonic() < deadline, "pg_dump never started waiting for its lock"
            time.sleep(0.1)
        admin.execute(f'DROP DATABASE "{doomed_database}" WITH (FORCE)')
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        locker.close()
        admin.close()

    error = stderr.decode("utf-8", "replace")
    assert process.returncode == ExitCode.SOURCE, error
    assert "Traceback" not in error
    assert "database events" in error and doomed_database in error and "no snapshot was written" in error
    assert stdout == b""
    assert snapshot_ids(repository, environment) == []
    assert packs(repository) == before_packs, "the failed snapshot left packs behind"
    assert list((repository / "locks").iterdir()) == []
