"""exclude_table_data on MariaDB/MySQL: mariadb-dump's --ignore-table-data, which a client without
it (MySQL's mysqldump, MariaDB clients before 2020) is refused for before anything runs; and a
fingerprint taken after the dump still records the tables without rows empty."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.config.model import ProjectConfig
from lockstep.databases import mysql
from lockstep.errors import UsageError
from lockstep.pipeline.snapshot import SnapshotRequest, create_snapshot
from tests.databases.test_mysql import adapter, database, name_of, run_sql, scratch
from tests.databases.test_mysql_consistent import limited_user
from tests.pipeline.test_verify import open_repository

__all__ = ["adapter", "database", "limited_user", "scratch"]  # fixtures used here


@pytest.fixture
def client_without_ignore_table_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A mariadb-dump first on PATH whose --help lists --ignore-table but not --ignore-table-data,
    as MySQL 8's mysqldump does; the answer asked once per process is forgotten before and after."""
    program = tmp_path / "mariadb-dump"
    program.write_text("#!/bin/sh\necho 'Usage: mysqldump [OPTIONS] database [tables]'\necho '  --ignore-table=name'\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    mysql.client_ignores_table_data.cache_clear()
    yield
    mysql.client_ignores_table_data.cache_clear()


@pytest.mark.usefixtures("client_without_ignore_table_data")
def test_a_client_without_ignore_table_data_is_refused_naming_the_key() -> None:
    with pytest.raises(UsageError) as refused:
        mysql.ADAPTER.dump("mariadb://root@127.0.0.1:3306/shop", None, exclude_table_data=["sessions"])
    assert "exclude_table_data" in refused.value.message and "--ignore-table-data" in refused.value.message
    assert "mariadb-client" in refused.value.hint


def test_a_fingerprint_taken_after_the_dump_records_the_excluded_table_empty(
    database: str, limited_user: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RELOAD the fingerprint is taken after the dump, from the live rows: the manifest
    still records the table as the dump holds it, with 0 rows, so verify does not expect them."""
    user, password = limited_user
    run_sql(
        "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE sessions (token varchar(20) PRIMARY KEY);"
        "INSERT INTO orders VALUES (1); INSERT INTO sessions VALUES ('a'), ('b')",
        name_of(database),
    )
    monkeypatch.setenv("EXCLUDE_TEST_PASSWORD", password)
    main = {
        "url": database.replace("root@", f"{user}@"),
        "password_env": "EXCLUDE_TEST_PASSWORD",
        "exclude_table_data": ["sessions"],
    }
    source = {"repository": {"url": str(tmp_path / "repository")}, "databases": {"main": main}}
    config = ProjectConfig.from_source(source, tmp_path).resolve(None)
    repository = open_repository(tmp_path / "repository")
    try:
        created = create_snapshot(repository, config, SnapshotRequest(project_directory=tmp_path), code=None)
    finally:
        repository.close()
    record = created.manifest.databases["main"]
    assert record.inspected == "after-dump" and record.rows_excluded == ["sessions"]
    rows = {table.name: (table.rows, table.checksum) for table in record.tables}
    assert rows["orders"][0] == 1 and rows["sessions"] == (0, "0")


def test_a_kept_table_referring_to_an_emptied_one_is_warned_about_naming_the_fix(
    adapter: mysql.MysqlAdapter, database: str, scratch: str
) -> None:
    """The restore loads with FOREIGN_KEY_CHECKS=0: it succeeds, and orders' rows refer to
    customers that are not there. The snapshot says so, as PostgreSQL's does; carts, whose rows
    are left out too, and invoices, referring to a kept table, are no concern."""
    run_sql(
        "CREATE TABLE customers (id int PRIMARY KEY);"
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int,"
        " FOREIGN KEY (customer_id) REFERENCES customers (id));"
        "CREATE TABLE carts (customer_id int, FOREIGN KEY (customer_id) REFERENCES customers (id));"
        "CREATE TABLE invoices (order_id int, FOREIGN KEY (order_id) REFERENCES orders (id));"
        "INSERT INTO customers VALUES (1); INSERT INTO orders VALUES (10, 1); INSERT INTO carts VALUES (1);",
        name_of(database),
    )
    dump = adapter.dump(database, None, exclude_table_data=["customers", "carts"])
    data = dump.stdout.read()
    dump.finish()
    assert dump.rows_excluded == ("carts", "customers")
    assert dump.warnings == (
        "exclude_table_data: table orders has a foreign key to customers, whose rows are left out: a restore "
        "keeps the rows of orders that refer to rows of customers, which are not there; leave out orders's rows "
        "too, or keep customers's",
    )
    adapter.restore(scratch, None, io.BytesIO(data), create=False)
    orphans = "SELECT COUNT(*) FROM orders WHERE customer_id NOT IN (SELECT id FROM customers)"
    assert run_sql(orphans, name_of(scratch)) == [["1"]]
