"""The MySQL/MariaDB adapter against the real MariaDB on 127.0.0.1:3306 (root, empty password)."""

from __future__ import annotations

import io
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockstep.databases import adapter_for
from lockstep.databases.base import STALE_SCRATCH_SECONDS, ServerLocation
from lockstep.databases.mysql import MysqlAdapter
from lockstep.errors import SourceError, UsageError
from tests.conftest import missing, require_binary

SERVER_URL = "mariadb://root@127.0.0.1:3306/mysql"
BINARY = bytes(range(256)) * 4
TEXT = "Grüße, 東京, emoji 😀🎉, quote ' and backslash \\"
TEXT_LITERAL = "'" + TEXT.replace("\\", "\\\\").replace("'", "''") + "'"


def run_sql(statements: str, database: str = "", user: str = "root", password: str = "") -> list[list[str]]:
    """Run SQL with the real client, outside the adapter under test."""
    completed = subprocess.run(
        [
            *("mariadb", "--host=127.0.0.1", "--port=3306", f"--user={user}", "--batch", "--skip-column-names"),
            *("--default-character-set=utf8mb4", *([database] if database else [])),
        ],
        input=statements.encode(),
        capture_output=True,
        env={"MYSQL_PWD": password, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    return [line.split("\t") for line in completed.stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def adapter() -> MysqlAdapter:
    require_binary("mariadb", "apt-get install mariadb-client")
    require_binary("mariadb-dump", "apt-get install mariadb-client")
    probe = subprocess.run(
        ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--connect-timeout=5", "-e", "SELECT 1"],
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if probe.returncode != 0:
        missing(f"MariaDB is not reachable on 127.0.0.1:3306: {probe.stderr.decode().strip()}")
    adapter = adapter_for(SERVER_URL)
    assert isinstance(adapter, MysqlAdapter)
    return adapter


@pytest.fixture
def database(adapter: MysqlAdapter) -> Iterator[str]:
    """A fresh, uniquely named database, dropped after the test."""
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


@pytest.fixture
def scratch(adapter: MysqlAdapter) -> Iterator[str]:
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


def name_of(url: str) -> str:
    return ServerLocation.parse(url).database


def dump_bytes(adapter: MysqlAdapter, url: str, password: str | None = None) -> bytes:
    stream = adapter.dump(url, password)
    data = stream.stdout.read()
    stream.finish()
    return data


RICH_SCHEMA = f"""
CREATE TABLE customers (id int AUTO_INCREMENT PRIMARY KEY, name varchar(200) CHARACTER SET utf8mb4 NOT NULL,
                        photo blob) ENGINE=InnoDB;
CREATE TABLE audit (customer_id int, note text CHARACTER SET utf8mb4) ENGINE=InnoDB;
INSERT INTO customers (name, photo) SELECT CONCAT('customer ', seq), UNHEX(MD5(seq)) FROM seq_1_to_500;
INSERT INTO customers (name, photo) VALUES ({TEXT_LITERAL}, 0x{BINARY.hex()});
DELIMITER ;;
CREATE FUNCTION double_it(value int) RETURNS int DETERMINISTIC RETURN value * 2;;
CREATE PROCEDURE count_customers(OUT total int) BEGIN SELECT COUNT(*) INTO total FROM customers; END;;
CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW
  INSERT INTO audit VALUES (NEW.id, CONCAT('inserted ', NEW.name));;
CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit WHERE customer_id < 0;;
DELIMITER ;
"""


def test_round_trip_preserves_rows_routines_triggers_events_and_bytes(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """dump → restore into a scratch database gives identical fingerprints and every object type."""
    run_sql(RICH_SCHEMA, name_of(database))
    data = dump_bytes(adapter, database)
    assert b"CREATE DATABASE" not in data and b"USE `" not in data  # restorable under any name
    adapter.restore(scratch, None, io.BytesIO(data), create=False)

    source, restored = adapter.inspect(database, None), adapter.inspect(scratch, None)
    assert restored.tables == source.tables
    assert {table.name: table.rows for table in restored.tables} == {"audit": 0, "customers": 501}
    target = name_of(scratch)
    assert run_sql("SELECT double_it(21)", target) == [["42"]]
    assert run_sql("CALL count_customers(@total); SELECT @total", target) == [["501"]]
    assert run_sql("SELECT name, HEX(photo) FROM customers WHERE LENGTH(photo) = 1024", target) == [
        [TEXT.replace("\\", "\\\\"), BINARY.hex().upper()]
    ]
    assert run_sql("SELECT event_name FROM information_schema.events WHERE event_schema = DATABASE()", target) == [
        ["nightly_cleanup"]
    ]
    run_sql("INSERT INTO customers (name) VALUES ('after restore 😀')", target)
    assert run_sql("SELECT note FROM audit", target) == [["inserted after restore 😀"]]


def test_restore_creates_the_database_when_asked(adapter: MysqlAdapter, database: str, tmp_path: Path) -> None:
    run_sql(RICH_SCHEMA, name_of(database))
    dump_file = tmp_path / "shop.sql"
    dump_file.write_bytes(dump_bytes(adapter, database))
    target = SERVER_URL.rsplit("/", 1)[0] + "/lockstep_verify_created_by_restore"
    adapter.drop_database(target, None)
    try:
        adapter.restore(target, None, dump_file, create=True)
        assert adapter.inspect(target, None).tables == adapter.inspect(database, None).tables
    finally:
        adapter.drop_database(target, None)


def test_restore_of_broken_sql_fails_with_source_error(adapter: MysqlAdapter, scratch: str) -> None:
    with pytest.raises(SourceError) as raised:
        adapter.restore(scratch, None, io.BytesIO(b"CREATE TABLE ( nonsense"), create=False)
    assert "mariadb" in raised.value.message and "syntax" in raised.value.message


def test_checksum_changes_when_one_value_changes(adapter: MysqlAdapter, database: str) -> None:
    run_sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT seq, 'v' FROM seq_1_to_50", name_of(database)
    )
    before = adapter.inspect(database, None).tables
    run_sql("UPDATE t SET v = 'w' WHERE id = 37", name_of(database))
    after = adapter.inspect(database, None).tables
    assert [table.rows for table in after] == [table.rows for table in before] == [50]
    assert after[0].checksum != before[0].checksum


def test_inspect_of_a_hundred_thousand_rows_is_fast(adapter: MysqlAdapter, database: str) -> None:
    run_sql(
        "CREATE TABLE big (id int PRIMARY KEY, body text);"
        "INSERT INTO big SELECT seq, REPEAT(MD5(seq), 4) FROM seq_1_to_100000",
        name_of(database),
    )
    started = time.monotonic()
    info = adapter.inspect(database, None)
    assert info.tables[0].rows == 100_000
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("table", "statements", "version"),
    [
        (
            "alembic_version",
            "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('4f2e9c1a7b3d')",
            "4f2e9c1a7b3d",
        ),
        (
            "schema_migrations",
            "CREATE TABLE schema_migrations (version varchar(20) PRIMARY KEY);"
            "INSERT INTO schema_migrations VALUES ('20240101120000'), ('20250301090000')",
            "20250301090000",
        ),
        (
            "django_migrations",
            "CREATE TABLE django_migrations (id int AUTO_INCREMENT PRIMARY KEY, app varchar(255), name varchar(255));"
            "INSERT INTO django_migrations (app, name) VALUES ('shop', '0001_initial'), ('shop', '0002_prices')",
            "shop.0002_prices",
        ),
    ],
)
def test_migration_version_is_detected(
    adapter: MysqlAdapter, database: str, table: str, statements: str, version: str
) -> None:
    run_sql(statements, name_of(database))
    info = adapter.inspect(database, None)
    assert (info.migration_table, info.migration_version) == (table, version)
    # summarize() reads no rows (deploys, smoke tests and the dashboard ask it), and agrees.
    summary = adapter.summarize(database, None)
    assert (summary.migration_table, summary.migration_version) == (table, version)
    assert summary.tables == [found.name for found in info.tables]
    assert (summary.engine, summary.server_version) == (info.engine, info.server_version)
    assert info.engine == "mysql" and "MariaDB" in info.server_version


def test_no_migration_table_means_no_version(adapter: MysqlAdapter, database: str) -> None:
    info = adapter.inspect(database, None)
    assert (info.tables, info.migration_table, info.migration_version) == ([], None, None)


def test_dump_of_a_missing_database_names_it(adapter: MysqlAdapter) -> None:
    url = SERVER_URL.rsplit("/", 1)[0] + "/no_such_database_here"
    stream = adapter.dump(url, None)
    stream.stdout.read()
    with pytest.raises(SourceError) as raised:
        stream.finish()
    assert "no_such_database_here" in str(raised.value)
    assert "Traceback" not in str(raised.value)


def test_a_user_that_does_not_exist_fails_without_showing_the_password(adapter: MysqlAdapter) -> None:
    url = "mysql://no_such_user@127.0.0.1:3306/mysql"
    secret = "pw-4f9a1c-not-for-logs"
    with pytest.raises(SourceError) as raised:
        adapter.inspect(url, secret)
    assert "Access denied" in str(raised.value) and secret not in str(raised.value)
    stream = adapter.dump(url, secret)
    stream.stdout.read()
    with pytest.raises(SourceError) as failed:
        stream.finish()
    assert "Access denied" in str(failed.value) and secret not in str(failed.value)


@pytest.fixture
def password_user(database: str) -> Iterator[tuple[str, str]]:
    """A real account with a password, allowed to use the test database only."""
    user, password = "lockstep_t_" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    hosts = ("localhost", "127.0.0.1")
    for host in hosts:
        run_sql(
            f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}';"
            f"GRANT ALL ON `{name_of(database)}`.* TO '{user}'@'{host}'"
        )
    yield user, password
    for host in hosts:
        run_sql(f"DROP USER IF EXISTS '{user}'@'{host}'")


def test_password_travels_in_the_environment_not_argv(
    adapter: MysqlAdapter, database: str, password_user: tuple[str, str]
) -> None:
    user, password = password_user
    run_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)", name_of(database))
    url = database.replace("root@", f"{user}@")
    stream = adapter.dump(url, password)
    data = stream.stdout.read()
    stream.finish()
    assert b"INSERT INTO `t` VALUES" in data
    assert all(password not in argument for argument in stream.command.argv)
    assert stream.command.env is not None and stream.command.env["MYSQL_PWD"] == password
    assert [table.rows for table in adapter.inspect(url, password).tables] == [2]
    with pytest.raises(SourceError) as raised:
        adapter.inspect(url, password + "-wrong")
    assert "Access denied" in str(raised.value) and password not in str(raised.value)


def test_drop_refuses_a_database_that_is_not_scratch(adapter: MysqlAdapter) -> None:
    with pytest.raises(UsageError, match="refusing"):
        adapter.drop_database(SERVER_URL, None)


def test_dispatch_by_scheme() -> None:
    assert isinstance(adapter_for("mysql://db/shop"), MysqlAdapter)
    assert isinstance(adapter_for("mariadb://db/shop"), MysqlAdapter)


def test_socket_urls_reach_the_server_and_other_options_are_refused(adapter: MysqlAdapter, database: str) -> None:
    """?socket=PATH, or the socket's path percent-encoded as the host; any other option is an
    error rather than silently dropped."""
    name = ServerLocation.parse(database).database
    run_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);", name)
    (socket,) = run_sql("SELECT @@socket")[0]
    encoded = socket.replace("/", "%2F")
    for url in (f"mariadb://root@localhost/{name}?socket={socket}", f"mariadb://root@{encoded}/{name}"):
        assert [(table.name, table.rows) for table in adapter.inspect(url, None).tables] == [("t", 3)], url
    with pytest.raises(UsageError) as refused:
        adapter.inspect(f"{database}?ssl-mode=REQUIRED", None)
    assert "'ssl-mode'" in refused.value.message and "socket" in (refused.value.hint or "")


SYSTEM_VERSIONED = """
CREATE TABLE hidden_period (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;
CREATE TABLE visible_period (id INT PRIMARY KEY, v INT,
  rs TIMESTAMP(6) GENERATED ALWAYS AS ROW START, re TIMESTAMP(6) GENERATED ALWAYS AS ROW END,
  PERIOD FOR SYSTEM_TIME (rs, re)) WITH SYSTEM VERSIONING;
CREATE TABLE by_transaction (id INT PRIMARY KEY, v INT,
  s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE, e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE,
  PERIOD FOR SYSTEM_TIME (s, e)) WITH SYSTEM VERSIONING ENGINE=InnoDB;
INSERT INTO hidden_period VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO visible_period (id, v) VALUES (1, 1), (2, 2);
INSERT INTO by_transaction (id, v) VALUES (1, 1);
UPDATE hidden_period SET v = 10 WHERE id = 1;
DELETE FROM hidden_period WHERE id = 3;
UPDATE visible_period SET v = 20;
UPDATE by_transaction SET v = 30;
"""


def test_system_versioned_tables_are_fingerprinted_by_their_current_rows(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """MariaDB lists them as 'SYSTEM VERSIONED', not 'BASE TABLE'; the dump holds their current
    rows, and a restore gives the period columns new times, so their checksums leave those out."""
    run_sql(SYSTEM_VERSIONED, name_of(database))
    source = adapter.inspect(database, None)
    assert {table.name: table.rows for table in source.tables} == {
        "by_transaction": 1,
        "hidden_period": 2,
        "visible_period": 2,
    }
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    assert adapter.inspect(scratch, None).tables == source.tables
    run_sql("UPDATE hidden_period SET v = 11 WHERE id = 1", name_of(database))
    changed = {table.name: table.checksum for table in adapter.inspect(database, None).tables}
    assert changed["hidden_period"] != {table.name: table.checksum for table in source.tables}["hidden_period"]


TIME_VERSIONED = """
CREATE TABLE hidden_period (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;
CREATE TABLE visible_period (id INT PRIMARY KEY, v INT,
  rs TIMESTAMP(6) GENERATED ALWAYS AS ROW START, re TIMESTAMP(6) GENERATED ALWAYS AS ROW END,
  PERIOD FOR SYSTEM_TIME (rs, re)) WITH SYSTEM VERSIONING;
INSERT INTO hidden_period VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO visible_period (id, v) VALUES (1, 1), (2, 2);
UPDATE hidden_period SET v = 10 WHERE id = 1;
DELETE FROM hidden_period WHERE id = 3;
UPDATE visible_period SET v = 20;
"""
HISTORY = {
    "hidden_period": "SELECT id, v, ROW_START, ROW_END FROM hidden_period FOR SYSTEM_TIME ALL ORDER BY 1, 3",
    "visible_period": "SELECT id, v, rs, re FROM visible_period FOR SYSTEM_TIME ALL ORDER BY 1, 3",
}


def dump_of(adapter: MysqlAdapter, url: str) -> tuple[bytes, Any]:
    stream = adapter.dump(url, None)
    data = stream.stdout.read()
    stream.finish()
    return data, stream


def test_the_history_of_system_versioned_tables_is_dumped_restored_and_fingerprinted(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """A snapshot kept only the current rows: a restore lost every earlier version. Now the
    dump holds the history (--dump-history), the restore writes it back with its times, and the
    fingerprint counts and sums it, so a restore that loses or changes it is caught."""
    source = name_of(database)
    run_sql(TIME_VERSIONED, source)
    data, stream = dump_of(adapter, database)
    assert "--dump-history" in stream.command.argv and stream.warnings == ()
    recorded = stream.consistent_info().tables
    assert {table.name: (table.rows, table.history_rows) for table in recorded} == {
        "hidden_period": (2, 4),
        "visible_period": (2, 4),
    }

    adapter.restore(scratch, None, io.BytesIO(data), create=False)
    target = name_of(scratch)
    for query in HISTORY.values():
        assert run_sql(query, target) == run_sql(query, source)
    assert adapter.inspect(scratch, None).tables == recorded

    run_sql("DELETE HISTORY FROM hidden_period", target)
    changed = {table.name: table for table in adapter.inspect(scratch, None).tables}
    assert changed["hidden_period"].history_rows == 2
    assert changed["hidden_period"].history_checksum != recorded[0].history_checksum
    assert changed["hidden_period"].checksum == recorded[0].checksum  # the current rows are the same


def test_a_table_versioned_by_transaction_id_keeps_its_current_rows_and_the_dump_says_so(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """mariadb-dump refuses --dump-history for the whole dump when one table is versioned by
    transaction ID: the dump holds the current rows of every versioned table, and its warning
    names them all rather than the history going missing silently."""
    run_sql(SYSTEM_VERSIONED, name_of(database))
    data, stream = dump_of(adapter, database)
    assert "--dump-history" not in stream.command.argv
    (warning,) = stream.warnings
    assert "by_transaction, hidden_period, visible_period" in warning and "not the history" in warning
    assert "versioned by transaction ID (by_transaction)" in warning
    recorded = stream.consistent_info().tables
    assert all(table.history_checksum is None for table in recorded)
    adapter.restore(scratch, None, io.BytesIO(data), create=False)
    assert adapter.inspect(scratch, None).tables == recorded


def test_a_client_without_dump_history_keeps_the_current_rows_and_says_so(
    adapter: MysqlAdapter, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older mariadb-dump (before 10.11) has no --dump-history: the warning says why."""
    from lockstep.databases import mysql

    monkeypatch.setattr(mysql, "client_dumps_history", lambda: False)
    run_sql(TIME_VERSIONED, name_of(database))
    _, stream = dump_of(adapter, database)
    assert "--dump-history" not in stream.command.argv
    (warning,) = stream.warnings
    assert "hidden_period, visible_period" in warning and "no --dump-history" in warning
    assert all(table.history_checksum is None for table in stream.consistent_info().tables)
    assert all(table.history_checksum is None for table in adapter.inspect(database, None).tables)


def test_float_columns_that_the_dump_rounds_are_named_when_it_is_made(adapter: MysqlAdapter, database: str) -> None:
    """mariadb-dump writes a FLOAT with 6 significant digits: the restore check found out, the
    snapshot did not say. A FLOAT(M,D) is written with its D decimals, which restore it exactly."""
    run_sql(
        "CREATE TABLE prices (id INT PRIMARY KEY, net FLOAT, gross FLOAT(10,2), ratio DOUBLE, weight FLOAT);"
        "CREATE VIEW cheap AS SELECT net FROM prices;"
        "CREATE TABLE `odd name` (f FLOAT)",
        name_of(database),
    )
    _, stream = dump_of(adapter, database)
    (warning,) = stream.warnings
    assert warning.startswith("FLOAT columns odd name.f, prices.net, prices.weight: ")
    assert "DOUBLE" in warning and "DECIMAL" in warning


def test_fields_with_a_backslash_tab_newline_or_nul_are_read_as_they_are(adapter: MysqlAdapter) -> None:
    """Batch mode escapes them (\\\\, \\t, \\n, \\0); a carriage return it leaves alone."""
    from lockstep.databases.mysql import _query, _session

    location = ServerLocation.parse(SERVER_URL)
    statement = "SELECT 'a\\\\tb', CONCAT('c', CHAR(9), 'd', CHAR(10), 'e', CHAR(0), 'f', CHAR(13), 'g'), ''"
    expected = [["a\\tb", "c\td\ne\0f\rg", ""]]
    assert _query(location, None, statement) == expected
    session = _session(location, None, "")
    try:
        assert session.rows(statement, 10) == expected
    finally:
        session.close()


OLD_COLLATION_CODE = """
ALTER DATABASE {database} CHARACTER SET latin1;
CREATE TABLE t (id INT PRIMARY KEY, v INT);
CREATE PROCEDURE p() SELECT 1;
CREATE FUNCTION f() RETURNS INT RETURN 1;
CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.v = 1;
CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;
ALTER DATABASE {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
"""


def test_a_dump_restores_under_another_name_when_its_code_has_an_older_collation(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """mariadb-dump wraps code created under another default collation in ALTER DATABASE
    statements that name the source database: restored elsewhere, they changed the source, or
    failed once it was gone. Without the name they set the default of the database restored into."""
    source = name_of(database)
    run_sql(OLD_COLLATION_CODE.format(database=f"`{source}`"), source)
    data = dump_bytes(adapter, database)
    assert f"ALTER DATABASE `{source}` CHARACTER SET latin1".encode() in data
    run_sql(f"DROP DATABASE `{source}`")
    adapter.restore(scratch, None, io.BytesIO(data), create=False)
    target = name_of(scratch)
    collations = run_sql(
        "SELECT routine_name, database_collation FROM information_schema.routines"
        f" WHERE routine_schema = '{target}' ORDER BY 1"
    )
    assert collations == [["f", "latin1_swedish_ci"], ["p", "latin1_swedish_ci"]]
    assert run_sql(f"SELECT database_collation FROM information_schema.triggers WHERE trigger_schema = '{target}'") == [
        ["latin1_swedish_ci"]
    ]
    assert run_sql("SELECT @@collation_database", target) == [["utf8mb4_general_ci"]]


def test_the_rewrite_finds_statements_split_across_reads() -> None:
    """Every read size gives the same bytes, with the name removed from whole statements only."""
    from lockstep.databases.mysql_dump_stream import without_database_names

    dump = (
        b"-- dump\nALTER DATABASE `sh``o.p` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;\n"
        b"INSERT INTO t VALUES ('\\nALTER DATABASE `x` CHARACTER SET a COLLATE b ;');\n"
        b"DELIMITER ;;\nALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ;;\n"
        b"ALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ; -- not all of the line\n"
        b"ALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ;"
    )
    expected = (
        b"-- dump\nALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci ;\n"
        b"INSERT INTO t VALUES ('\\nALTER DATABASE `x` CHARACTER SET a COLLATE b ;');\n"
        b"DELIMITER ;;\nALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ;;\n"
        b"ALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ; -- not all of the line\n"
        b"ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ;"
    )
    for size in range(1, len(dump) + 2):
        assert without_database_names(io.BytesIO(dump), chunk_bytes=size).read() == expected, size


def test_a_new_database_gets_the_default_character_set_of_the_source(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """Without --databases the dump carries no CREATE DATABASE: a database created for the
    restore had the server's default, and so had the code created in it."""
    source = name_of(database)
    run_sql(
        f"ALTER DATABASE `{source}` CHARACTER SET latin1 COLLATE latin1_german1_ci;"
        "CREATE TABLE t (id INT PRIMARY KEY); CREATE PROCEDURE p() SELECT 1;",
        source,
    )
    data = dump_bytes(adapter, database)
    created = SERVER_URL.rsplit("/", 1)[0] + "/lockstep_verify_created_with_charset"
    adapter.drop_database(created, None)
    try:
        adapter.restore(scratch, None, io.BytesIO(data), create=False)
        adapter.restore(created, None, io.BytesIO(data), create=True)
        for target in (name_of(scratch), name_of(created)):
            assert run_sql("SELECT @@character_set_database, @@collation_database", target) == [
                ["latin1", "latin1_german1_ci"]
            ]
            assert run_sql(
                f"SELECT database_collation FROM information_schema.routines WHERE routine_schema = '{target}'"
            ) == [["latin1_german1_ci"]]
    finally:
        adapter.drop_database(created, None)


def test_a_new_scratch_database_drops_those_a_killed_verification_left(adapter: MysqlAdapter) -> None:
    """As on PostgreSQL: a dated scratch database over a day old is dropped by the next one,
    unless a connection still uses it; undated names (older versions) are left alone."""
    day_and_more = int(time.time()) - STALE_SCRATCH_SECONDS - 60
    stale = f"lockstep_verify_{day_and_more:08x}_0123456789ab"
    in_use = f"lockstep_verify_{day_and_more:08x}_ba9876543210"
    recent = f"lockstep_verify_{int(time.time()):08x}_0123456789ab"
    undated = "lockstep_verify_0123456789ab"
    names = (stale, in_use, recent, undated)
    run_sql("".join(f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`;" for name in names))
    holder = subprocess.Popen(
        ["mariadb", "-h", "127.0.0.1", "-u", "root", in_use, "-e", "SELECT SLEEP(30)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not run_sql(f"SELECT 1 FROM information_schema.processlist WHERE db = '{in_use}'"):
            assert time.monotonic() < deadline, "the holding connection never showed up"
            time.sleep(0.1)
        new = adapter.create_scratch(SERVER_URL, None)
        left = {row[0] for row in run_sql("SHOW DATABASES LIKE 'lockstep\\\\_verify\\\\_%'")}
        assert stale not in left
        assert {in_use, recent, undated, ServerLocation.parse(new).database} <= left
        adapter.drop_database(new, None)
    finally:
        holder.kill()
        holder.wait()
        run_sql("".join(f"DROP DATABASE IF EXISTS `{name}`;" for name in names))
