"""The MariaDB dump's fingerprint comes from the dump's own snapshot, against the real MariaDB on
127.0.0.1:3306 (root, empty password), while another connection keeps writing."""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import Iterator

import pytest

from lockstep.databases import mysql
from lockstep.databases.base import ServerLocation
from lockstep.databases.mysql import DumpProcess, MysqlAdapter, MysqlDump
from lockstep.databases.mysql_session import ClientSession, StatementFailed
from lockstep.process import Command
from tests.databases.test_mysql import adapter, database, name_of, run_sql, scratch

__all__ = ["adapter", "database", "scratch"]  # fixtures used here

BIG_TABLE = (
    "CREATE TABLE orders (id int AUTO_INCREMENT PRIMARY KEY, total int NOT NULL, note text) ENGINE=InnoDB;"
    "INSERT INTO orders (total, note) SELECT seq, REPEAT(MD5(seq), 6) FROM seq_1_to_20000;"
    "CREATE TABLE counters (name varchar(20) PRIMARY KEY, value int NOT NULL) ENGINE=InnoDB;"
    "INSERT INTO counters VALUES ('orders', 20000);"
)


def client_session(url: str) -> ClientSession:
    """A `mariadb` session of its own (an application's pooled connection)."""
    location = ServerLocation.parse(url)
    command = Command(
        ("mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", location.database), env={"MYSQL_PWD": ""}
    )
    return ClientSession(command, location.display(), None)


class Writer:
    """Inserts an order and updates a counter in one transaction, as fast as it can, until stopped."""

    def __init__(self, url: str) -> None:
        self.committed = 0
        self.error: BaseException | None = None
        self._session = client_session(url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._session.close()
        assert self.error is None, self.error

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.committed < count:
            assert time.monotonic() < deadline, f"the writer committed only {self.committed} times"
            time.sleep(0.005)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._session.rows(
                    "START TRANSACTION; INSERT INTO orders (total, note) VALUES (1, 'during the dump');"
                    "SET @id = 1 + FLOOR(RAND() * 20000); UPDATE orders SET total = total + 1 WHERE id = @id;"
                    "UPDATE counters SET value = value + 1 WHERE name = 'orders'; COMMIT",
                    30,
                )
                self.committed += 1
        except BaseException as error:
            self.error = error


def test_fingerprint_is_the_dumps_while_another_connection_writes(
    adapter: MysqlAdapter, database: str, scratch: str
) -> None:
    """Rows committed after the dump's snapshot are in neither the dump nor the fingerprint, so
    the test-restore matches it exactly; a fingerprint taken after the dump (the old way) would not.

    Three rounds: with the lock released before the dump's transaction begins, a round fails
    about two times in three (the writer commits every few milliseconds).
    """
    run_sql(BIG_TABLE, name_of(database))
    with Writer(database) as writer:
        writer.wait_for(5)
        for _ in range(3):
            stream = adapter.dump(database, None)
            assert isinstance(stream, MysqlDump), getattr(stream, "inspected_note", None)
            # The dump's snapshot is taken; make sure rows are committed before it is read.
            writer.wait_for(writer.committed + 20)
            data = stream.stdout.read()
            stream.finish()
            fingerprint = stream.consistent_info()
            after_dump = adapter.inspect(database, None)
            run_sql(f"DROP DATABASE `{name_of(scratch)}`; CREATE DATABASE `{name_of(scratch)}`")
            adapter.restore(scratch, None, io.BytesIO(data), create=False)
            restored = adapter.inspect(scratch, None)

            assert restored.tables == fingerprint.tables
            assert stream.inspected == "dump" and stream.inspected_note is None
            assert stream.lock_seconds < 2  # writers were held back this long (milliseconds here)
            rows = {table.name: table.rows for table in fingerprint.tables}
            counter = int(run_sql("SELECT value FROM counters", name_of(scratch))[0][0])
            assert counter == rows["orders"]  # one moment: both tables of one transaction agree
            assert after_dump.tables != fingerprint.tables  # what `inspected: after-dump` recorded
            assert {table.name: table.rows for table in after_dump.tables}["orders"] > rows["orders"]


def test_a_myisam_table_is_marked_outside_the_snapshot(adapter: MysqlAdapter, database: str) -> None:
    run_sql(
        "CREATE TABLE ledger (id int PRIMARY KEY) ENGINE=InnoDB; INSERT INTO ledger VALUES (1);"
        "CREATE TABLE hits (id int PRIMARY KEY) ENGINE=MyISAM; INSERT INTO hits VALUES (1), (2);",
        name_of(database),
    )
    stream = adapter.dump(database, None)
    assert isinstance(stream, MysqlDump)
    stream.stdout.read()
    stream.finish()
    tables = {table.name: table for table in stream.consistent_info().tables}
    assert (tables["ledger"].consistent, tables["hits"].consistent) == (True, False)
    assert tables["hits"].rows == 2
    assert stream.inspected == "dump-except-nontransactional"
    assert stream.inspected_note is not None and "hits" in stream.inspected_note
    assert "ledger" not in stream.inspected_note


@pytest.fixture
def limited_user(database: str) -> Iterator[tuple[str, str]]:
    """An account with all rights on the test database, and PROCESS but not RELOAD."""
    user, password = "lockstep_t_" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    for host in ("localhost", "127.0.0.1"):
        run_sql(
            f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}';"
            f"GRANT ALL ON `{name_of(database)}`.* TO '{user}'@'{host}'; GRANT PROCESS ON *.* TO '{user}'@'{host}'"
        )
    yield user, password
    for host in ("localhost", "127.0.0.1"):
        run_sql(f"DROP USER IF EXISTS '{user}'@'{host}'")


def test_without_reload_the_dump_runs_and_says_its_fingerprint_is_after_it(
    adapter: MysqlAdapter, database: str, limited_user: tuple[str, str]
) -> None:
    user, password = limited_user
    run_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)", name_of(database))
    url = database.replace("root@", f"{user}@")
    stream = adapter.dump(url, password)
    assert isinstance(stream, DumpProcess) and not hasattr(stream, "consistent_info")
    assert b"INSERT INTO `t` VALUES" in stream.stdout.read()
    stream.finish()
    assert stream.inspected == "after-dump"
    assert stream.inspected_note is not None and "RELOAD" in stream.inspected_note
    assert password not in stream.inspected_note


def test_without_process_the_dump_says_so(adapter: MysqlAdapter, database: str, limited_user: tuple[str, str]) -> None:
    user, password = limited_user
    for host in ("localhost", "127.0.0.1"):
        run_sql(f"REVOKE PROCESS ON *.* FROM '{user}'@'{host}'")
    stream = adapter.dump(database.replace("root@", f"{user}@"), password)
    stream.stdout.read()
    stream.finish()
    assert isinstance(stream, DumpProcess)
    assert stream.inspected_note is not None and "PROCESS" in stream.inspected_note


def test_a_lock_not_granted_in_time_lets_the_dump_go_on_without_it(
    adapter: MysqlAdapter, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLUSH TABLES WITH READ LOCK waits for a table locked for writing (as for a long UPDATE);
    the snapshot does not wait with it, and says why its fingerprint is from after the dump."""
    run_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", name_of(database))
    monkeypatch.setattr(mysql, "LOCK_WAIT_SECONDS", 1)
    holder = client_session(database)
    try:
        holder.rows("LOCK TABLES t WRITE", 10)
        started = time.monotonic()
        stream = adapter.dump(database, None)
        waited = time.monotonic() - started
        holder.rows("UNLOCK TABLES", 10)
        stream.stdout.read()
        stream.finish()
    finally:
        holder.close()
    assert isinstance(stream, DumpProcess) and stream.inspected_note is not None
    assert "waited more than 1 s" in stream.inspected_note
    assert waited < 5


def test_kill_ends_the_dump_and_the_fingerprint_session(adapter: MysqlAdapter, database: str) -> None:
    """A snapshot that fails while streaming leaves no connection (and so no transaction) behind."""
    run_sql(BIG_TABLE, name_of(database))
    stream = adapter.dump(database, None)
    assert isinstance(stream, MysqlDump)
    assert "--single-transaction" in stream.command.argv
    stream.stdout.read(1000)
    stream.kill()
    query = f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{name_of(database)}'"
    deadline = time.monotonic() + 20
    while run_sql(query) != [["0"]]:
        assert time.monotonic() < deadline, run_sql("SELECT ID, COMMAND, STATE FROM information_schema.PROCESSLIST")
        time.sleep(0.05)


def test_a_session_reports_the_servers_error_number_without_the_password() -> None:
    secret = "pw-" + secrets.token_hex(6)
    command = Command(
        ("mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--connect-timeout=5"),
        env={"MYSQL_PWD": ""},
    )
    session = ClientSession(command, "mariadb://root@127.0.0.1:3306/", secret)
    try:
        assert session.rows("SELECT 1, 'two'", 10) == [["1", "two"]]
        with pytest.raises(StatementFailed) as raised:
            session.rows(f"SELECT * FROM no_such_database_here.t WHERE x = '{secret}'", 10)
    finally:
        session.close()
    assert raised.value.code == 1146 and "doesn't exist" in raised.value.message
    assert secret not in raised.value.message


def test_read_views_are_read_from_the_innodb_status() -> None:
    """Only active transactions whose snapshot exists count: one listed without its read view
    yet (a moment after START TRANSACTION) or "not started" does not. (The session hands the
    report over with its newlines, which batch mode escapes, unescaped.)"""
    status = (
        "\n------------\nTRANSACTIONS\n------------\nTrx id counter 203\n"
        "LIST OF TRANSACTIONS FOR EACH SESSION:\n"
        "---TRANSACTION (0x7eff616e9b80), ACTIVE 0 sec\n0 lock struct(s), heap size 1128, 0 row lock(s)\n"
        "MariaDB thread id 142, OS thread handle 139635293497024, query id 7619 127.0.0.1 root User sleep\n"
        "SELECT SLEEP(2)\nTrx read view will not see trx with id >= 203, sees < 203\n"
        "---TRANSACTION (0x7eff616e8a80), not started\n"
        "MariaDB thread id 143, OS thread handle 1, query id 7620 127.0.0.1 root\n"
        "---TRANSACTION (0x7eff616e8b80), ACTIVE 0 sec\n"
        "MariaDB thread id 144, OS thread handle 1, query id 7621 127.0.0.1 root\n"
        "---TRANSACTION 421, ACTIVE 3 sec\nMySQL thread id 150, OS thread handle 2, query id 1 localhost app\n"
        "Trx read view will not see trx with id >= 190, sees < 180\n--------\nFILE I/O\n"
    )

    class Status:
        def rows(self, statement: str, timeout: float) -> list[list[str]]:
            assert statement == "SHOW ENGINE INNODB STATUS"
            return [["InnoDB", "", status]]

    assert mysql._read_views(Status()) == {142: ">= 203, sees < 203", 150: ">= 190, sees < 180"}  # type: ignore[arg-type]


def test_a_dump_whose_transaction_is_not_seen_in_time_goes_on_unsynchronised(
    adapter: MysqlAdapter, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", name_of(database))
    monkeypatch.setattr(mysql, "DUMP_START_SECONDS", 0)
    stream = adapter.dump(database, None)
    assert b"INSERT INTO `t` VALUES" in stream.stdout.read()
    stream.finish()
    assert isinstance(stream, DumpProcess) and stream.inspected == "after-dump"
    assert stream.inspected_note is not None and "did not appear within 0 s" in stream.inspected_note
