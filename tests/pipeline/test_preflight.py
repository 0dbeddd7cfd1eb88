"""Preflight checks against the real things: the real file system's free space, real SQLite files,
the real PostgreSQL and MariaDB servers, a closed loopback port, and PATH lookups."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest

from lockstep.config.model import DatabaseConfig, ProjectConfig
from lockstep.errors import SourceError, StorageError
from lockstep.exit_codes import ExitCode
from lockstep.pipeline.preflight import (
    CheckResult,
    check_database_reachable,
    check_free_disk_space,
    check_required_binaries,
    raise_for_failures,
    run_preflight,
)
from tests.conftest import missing, require_binary


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_free_disk_space_passes_and_fails_on_the_threshold(tmp_path: Path) -> None:
    """The repository need not exist yet: the nearest existing parent's file system is measured."""
    location = f"local:{tmp_path / 'not' / 'yet' / 'repository'}"
    passed = check_free_disk_space(location, 0)
    assert passed.ok and str(tmp_path) in passed.detail
    failed = check_free_disk_space(location, 1 << 40)
    assert not failed.ok
    assert "MiB free" in failed.detail and failed.fix is not None and "min_free_disk_mb" in failed.fix
    assert check_free_disk_space("s3:http://127.0.0.1:9/bucket", 1 << 40).ok  # not a local disk


def test_sqlite_reachable_and_missing(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    ok = check_database_reachable("main", DatabaseConfig(url=f"sqlite:///{database}"))
    assert ok.ok and ok.name == "database main"
    gone = check_database_reachable("archive", DatabaseConfig(url=f"sqlite:///{tmp_path / 'gone.db'}"))
    assert not gone.ok and gone.name == "database archive"
    assert "does not exist" in gone.detail and gone.fix
    assert not (tmp_path / "gone.db").exists(), "the check must not create the database"


def test_postgresql_reachable_and_refused_fast() -> None:
    """A closed port fails in well under the connect timeout, naming the database and the address."""
    require_binary("pg_dump", "apt-get install postgresql-client")
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.Error as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")
    ok = check_database_reachable("shop", DatabaseConfig(url="postgresql://postgres@127.0.0.1:5432/postgres"))
    assert ok.ok, ok.detail
    no_database = check_database_reachable(
        "shop", DatabaseConfig(url="postgresql://postgres@127.0.0.1:5432/lockstep_preflight_no_such_database")
    )
    assert not no_database.ok and "lockstep_preflight_no_such_database" in no_database.detail
    port = closed_port()
    started = time.monotonic()
    refused = check_database_reachable("orders", DatabaseConfig(url=f"postgresql://postgres@127.0.0.1:{port}/orders"))
    assert time.monotonic() - started < 8
    assert not refused.ok and refused.name == "database orders" and f"127.0.0.1:{port}" in refused.detail


def test_mariadb_reachable_and_refused() -> None:
    require_binary("mariadb", "apt-get install mariadb-client")
    ok = check_database_reachable("app", DatabaseConfig(url="mysql://root@127.0.0.1:3306/mysql"))
    if not ok.ok and "connect" in ok.detail.lower():
        missing(f"MariaDB is not reachable on 127.0.0.1:3306: {ok.detail}")
    assert ok.ok, ok.detail
    refused = check_database_reachable("app", DatabaseConfig(url=f"mariadb://root@127.0.0.1:{closed_port()}/app"))
    assert not refused.ok


def test_a_missing_password_variable_fails_the_database_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKSTEP_TEST_UNSET_PASSWORD", raising=False)
    result = check_database_reachable(
        "shop",
        DatabaseConfig(url="postgresql://app@127.0.0.1:5432/shop", password_env="LOCKSTEP_TEST_UNSET_PASSWORD"),
    )
    assert not result.ok and "LOCKSTEP_TEST_UNSET_PASSWORD" in result.detail


def test_required_binaries_follow_the_engines_in_use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With an empty PATH the PostgreSQL tools are reported missing by name; SQLite needs none."""
    databases = {
        "shop": DatabaseConfig(url="postgresql://postgres@127.0.0.1:5432/shop"),
        "cache": DatabaseConfig(url="sqlite:///cache.db"),
        "blog": DatabaseConfig(url="mariadb://root@127.0.0.1:3306/blog"),
    }
    monkeypatch.setenv("PATH", str(tmp_path))
    results = {result.name: result for result in check_required_binaries(databases)}
    assert set(results) == {"postgresql client tools", "sqlite client tools", "mariadb client tools"}
    assert not results["postgresql client tools"].ok
    assert "pg_dump" in results["postgresql client tools"].detail
    assert "pg_restore" in results["postgresql client tools"].detail
    assert "mariadb-dump or mysqldump" in results["mariadb client tools"].detail
    assert results["sqlite client tools"].ok
    # A mysqldump alone satisfies the dump tool.
    for name in ("mysqldump", "mysql"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    mysql = next(result for result in check_required_binaries(databases) if result.name == "mariadb client tools")
    assert mysql.ok, mysql.detail


def test_run_preflight_and_the_errors_it_raises(tmp_path: Path) -> None:
    """Disk failures are storage errors (14), databases and tools source errors (15)."""
    database = tmp_path / "app.db"
    sqlite3.connect(database).close()
    config = ProjectConfig.model_validate(
        {
            "repository": {"url": f"local:{tmp_path / 'repository'}"},
            "databases": {"main": {"url": f"sqlite:///{database}"}, "gone": {"url": f"sqlite:///{tmp_path}/x.db"}},
            "backup": {"min_free_disk_mb": 0},
        }
    )
    results = run_preflight(config)
    assert [result.name for result in results] == [
        "free disk space",
        "sqlite client tools",
        "database main",
        "database gone",
    ]
    assert [result.ok for result in results] == [True, True, True, False]
    with pytest.raises(SourceError) as raised:
        raise_for_failures(results)
    assert raised.value.exit_code == ExitCode.SOURCE and "database gone" in raised.value.message
    with pytest.raises(StorageError):
        raise_for_failures(run_preflight(config, min_free_disk_mb=1 << 40))
    raise_for_failures([CheckResult("free disk space", "disk", True, "plenty")])
