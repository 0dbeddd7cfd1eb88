"""A MariaDB database through the whole CLI: `snapshot create` while the application writes,
`snapshot verify --level restore`, `snapshot restore --to` (the real CLI in a child process,
the real MariaDB on 127.0.0.1:3306)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_snapshot_cli import Project
from tests.cli.test_snapshot_verify_cli import make_project
from tests.databases.test_mysql_consistent import BIG_TABLE, Writer
from tests.pipeline.test_verify import mariadb_database, run_mariadb, unique_name


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh git project with an initialised repository (its SQLite database is not used)."""
    return make_project(tmp_path)


@pytest.mark.slow
def test_create_while_writing_then_verify_restore_and_restore_to(project: Project) -> None:
    """The manifest's counts are the dump's even though rows are committed throughout the
    snapshot, so the restore-level verification passes; --to restores those same rows."""
    with mariadb_database(BIG_TABLE) as url:
        project.write_config({"shop": url})
        with Writer(url) as writer:
            writer.wait_for(5)
            before = writer.committed
            created = project.create("--allow-dirty", "-m", "mariadb while writing")
            writer.wait_for(writer.committed + 5)
            during = writer.committed - before
        live_rows = int(run_mariadb(url, "SELECT COUNT(*) FROM orders")[0][0])

        shown = json.loads(project.ok("snapshot", "show", created["id"][:12], "--json").out)
        record = shown["manifest"]["databases"]["shop"] if "manifest" in shown else shown["databases"]["shop"]
        rows = {table["name"]: table["rows"] for table in record["tables"]}
        assert record["engine"] == "mysql" and record["inspected"] == "dump"
        assert during > 5 and 20000 < rows["orders"] < live_rows  # written before, during and after

        verified = json.loads(project.ok("snapshot", "verify", "latest", "--level", "restore", "--json").out)
        assert verified["ok"] is True, verified
        assert verified["databases"][0]["name"] == "shop"
        assert verified["databases"][0]["rows"] == sum(rows.values())

        target_name = unique_name()
        target = url.rsplit("/", 1)[0] + "/" + target_name
        run_mariadb(url, f"CREATE DATABASE `{target_name}` CHARACTER SET utf8mb4", database="")
        try:
            restored = project.ok("snapshot", "restore", "latest", "--database", "shop", "--to", target)
            assert f"restored into {target}" in restored.out
            assert run_mariadb(target, "SELECT COUNT(*) FROM orders") == [[str(rows["orders"])]]
            assert run_mariadb(target, "SELECT value FROM counters") == [[str(rows["orders"])]]
            kinds = [item["kind"] for item in json.loads(project.ok("snapshot", "list", "--json").out)]
            assert kinds == ["manual"]
        finally:
            run_mariadb(url, f"DROP DATABASE IF EXISTS `{target_name}`", database="")


def test_restore_to_a_missing_mariadb_database_creates_it(project: Project) -> None:
    with mariadb_database("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);") as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "mariadb")
        target_name = unique_name()
        target = url.rsplit("/", 1)[0] + "/" + target_name
        try:
            project.ok("snapshot", "restore", "latest", "--database", "shop", "--to", target)
            assert run_mariadb(target, "SELECT COUNT(*) FROM t") == [["2"]]
        finally:
            run_mariadb(url, f"DROP DATABASE IF EXISTS `{target_name}`", database="")


def test_a_myisam_table_is_shown_as_outside_the_snapshot_and_verify_passes(project: Project) -> None:
    """A MyISAM table is in no transaction's snapshot: the manifest marks it, `snapshot show`
    says so, and a restore-level verify does not hold its counts against the dump."""
    schema = (
        "CREATE TABLE orders (id int PRIMARY KEY) ENGINE=InnoDB; INSERT INTO orders VALUES (1), (2);"
        "CREATE TABLE hits (id int PRIMARY KEY) ENGINE=MyISAM; INSERT INTO hits VALUES (1);"
    )
    with mariadb_database(schema) as url:
        project.write_config({"shop": url})
        created = project.create("--allow-dirty", "-m", "mixed engines")
        shown = json.loads(project.ok("snapshot", "show", created["id"][:12], "--json").out)
        record = shown["manifest"]["databases"]["shop"] if "manifest" in shown else shown["databases"]["shop"]
        tables = {table["name"]: table for table in record["tables"]}
        assert record["inspected"] == "dump-except-nontransactional"
        assert "hits" in record["inspected_note"]
        assert tables["hits"]["consistent"] is False and "consistent" not in tables["orders"]

        readable = project.ok("snapshot", "show", created["id"][:12]).out
        assert "hits: 1 row (outside the snapshot)" in readable
        # The engine is `mysql` for both servers; show says which one it was (it said "mysql").
        assert f"database     shop: MariaDB {record['server_version']}, " in readable, readable
        assert "counts       from the dump's own snapshot, except:" in readable

        verified = json.loads(project.ok("snapshot", "verify", "latest", "--level", "restore", "--json").out)
        assert verified["ok"] is True, verified


def test_create_warns_of_what_the_dump_cannot_keep_and_the_manifest_says_so(project: Project) -> None:
    """A FLOAT column the dump rounds and a history the dump cannot hold were found out at a
    restore, if ever; now `snapshot create` warns, naming them, and the manifest keeps the warnings."""
    schema = (
        "CREATE TABLE m (id INT PRIMARY KEY, f FLOAT); INSERT INTO m VALUES (1, 0.5);"
        "CREATE TABLE ledger (id INT PRIMARY KEY, s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE,"
        " e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE, PERIOD FOR SYSTEM_TIME (s, e))"
        " WITH SYSTEM VERSIONING ENGINE=InnoDB;"
    )
    with mariadb_database(schema) as url:
        project.write_config({"shop": url})
        created = project.ok("snapshot", "create", "--allow-dirty", "--json")
        history, floats = json.loads(created.out)["databases"]["shop"]["warnings"]
        assert history.startswith("system-versioned table ledger: only the current rows are in the snapshot")
        assert floats.startswith("FLOAT column m.f: ")
        events = [json.loads(line) for line in created.err.splitlines()]
        shown_warnings = [event["message"] for event in events if event["event"] == "warning"]
        assert shown_warnings == [f"database shop: {history}", f"database shop: {floats}"]
        again = project.ok("snapshot", "create", "--allow-dirty", "--log-format", "text", "--quiet")
        assert f"lockstep: warning: database shop: {floats}" in " ".join(again.err.split())
        shown = project.ok("snapshot", "show", "latest").out
        assert "warning      database shop: FLOAT column m.f" in shown


def test_a_dump_that_cannot_reach_its_database_says_what_to_check(project: Project) -> None:
    """mariadb-dump failing (no such database, a wrong password) ended with the hint of a
    user's own backup command, "fix the command and run the backup again", where the user wrote
    no command: it now names what to check, as PostgreSQL's connection errors do."""
    with mariadb_database("CREATE TABLE t (id int PRIMARY KEY);") as url:
        missing = url.rsplit("/", 1)[0] + "/" + unique_name()
        project.write_config({"shop": missing})
        failed = project.lockstep("snapshot", "create", "--allow-dirty", "-m", "no such database")
        assert failed.returncode == 15, failed.err
        line = failed.err.strip().splitlines()[-1]
        assert "mariadb-dump exited" in line and "no snapshot was written" in line, line
        assert line.endswith("check the URL, that the server runs and the credentials (`lockstep doctor` checks them)")
        assert "fix the command" not in line, line
