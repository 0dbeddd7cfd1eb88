"""The SQLite adapter (Python's sqlite3: no server), and the scheme dispatcher."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.databases import adapter_for
from lockstep.databases.base import STALE_SCRATCH_SECONDS
from lockstep.databases.mysql import MysqlAdapter
from lockstep.databases.sqlite import SqliteAdapter, database_path
from lockstep.errors import SourceError, UsageError

BINARY = bytes(range(256)) * 4
TEXT = 'Grüße, 東京, emoji 😀, quote \' and "double"'


@pytest.fixture
def adapter() -> SqliteAdapter:
    adapter = adapter_for("sqlite:////tmp/x.db")
    assert isinstance(adapter, SqliteAdapter)
    return adapter


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def scratch(adapter: SqliteAdapter) -> Iterator[str]:
    url = adapter.create_scratch("sqlite:////unused.db", None)
    yield url
    adapter.drop_database(url, None)


def execute(url: str, statements: str) -> None:
    with contextlib.closing(sqlite3.connect(database_path(url))) as connection, connection:
        connection.executescript(statements)


def dump_bytes(adapter: SqliteAdapter, url: str) -> bytes:
    stream = adapter.dump(url, None)
    data = stream.stdout.read()
    stream.finish()
    return data


def test_round_trip_gives_identical_fingerprints(adapter: SqliteAdapter, database: str, scratch: str) -> None:
    execute(
        database,
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, photo BLOB, balance REAL);"
        "CREATE TABLE tags (name TEXT PRIMARY KEY, weight INT) WITHOUT ROWID;"
        "CREATE VIEW rich AS SELECT name FROM customers WHERE balance > 100;"
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 500)"
        " INSERT INTO customers (name, photo, balance) SELECT 'customer ' || n, randomblob(16), n * 0.5 FROM g;"
        "INSERT INTO tags VALUES ('b', 2), ('a', 1);",
    )
    with contextlib.closing(sqlite3.connect(database_path(database))) as connection, connection:
        connection.execute("INSERT INTO customers (name, photo) VALUES (?, ?)", (TEXT, BINARY))
    data = dump_bytes(adapter, database)
    assert data.startswith(b"SQLite format 3\x00")
    adapter.restore(scratch, None, io.BytesIO(data), create=False)

    source, restored = adapter.inspect(database, None), adapter.inspect(scratch, None)
    assert restored.tables == source.tables
    assert [(table.name, table.rows) for table in restored.tables] == [("customers", 501), ("tags", 2)]
    with contextlib.closing(sqlite3.connect(database_path(scratch))) as connection:
        assert connection.execute("SELECT name, photo FROM customers WHERE id = 501").fetchall() == [(TEXT, BINARY)]
        assert connection.execute("SELECT count(*) FROM rich").fetchone() == (300,)


def test_checksum_changes_when_one_value_changes(adapter: SqliteAdapter, database: str) -> None:
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a'), ('b'), ('c');")
    before = adapter.inspect(database, None).tables
    execute(database, "UPDATE t SET v = 'x' WHERE v = 'b'")
    after = adapter.inspect(database, None).tables
    assert [table.rows for table in after] == [table.rows for table in before] == [3]
    assert after[0].checksum != before[0].checksum


def test_inspect_of_a_hundred_thousand_rows_is_fast(adapter: SqliteAdapter, database: str) -> None:
    execute(
        database,
        "CREATE TABLE big (id INTEGER PRIMARY KEY, body TEXT);"
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 100000)"
        " INSERT INTO big SELECT n, hex(randomblob(32)) FROM g;",
    )
    started = time.monotonic()
    assert adapter.inspect(database, None).tables[0].rows == 100_000
    assert time.monotonic() - started < 10


def test_backup_is_consistent_while_the_application_keeps_writing(
    adapter: SqliteAdapter, database: str, scratch: str
) -> None:
    """Every transaction adds ten rows and bumps a counter: a consistent copy has rows 1..10k
    and a counter of k, whatever moment the backup caught."""
    execute(
        database,
        "PRAGMA journal_mode = WAL;"
        "CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT);"
        "CREATE TABLE counter (transactions INT); INSERT INTO counter VALUES (0);"
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 100000)"
        " INSERT INTO items SELECT n, hex(randomblob(64)) FROM g;"
        "UPDATE counter SET transactions = 10000;",
    )
    stop = threading.Event()
    committed = [0]

    def write() -> None:
        with contextlib.closing(sqlite3.connect(database_path(database), timeout=30)) as connection:
            while not stop.is_set():
                with connection:
                    for _ in range(10):
                        connection.execute("INSERT INTO items (body) VALUES (hex(randomblob(64)))")
                    connection.execute("UPDATE counter SET transactions = transactions + 1")
                committed[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while committed[0] < 20:
            time.sleep(0.01)
        data = dump_bytes(adapter, database)
        during = committed[0]
        time.sleep(0.1)
    finally:
        stop.set()
        writer.join()
    assert committed[0] > during  # the writer kept going after the backup

    adapter.restore(scratch, None, io.BytesIO(data), create=False)
    with contextlib.closing(sqlite3.connect(database_path(scratch))) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (transactions,) = connection.execute("SELECT transactions FROM counter").fetchone()
        count, low, high = connection.execute("SELECT count(*), min(id), max(id) FROM items").fetchone()
    assert transactions >= 10_020
    assert (count, low, high) == (transactions * 10, 1, transactions * 10)


def test_backup_gives_up_on_a_database_another_process_keeps_locked(
    adapter: SqliteAdapter, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's backup() retries SQLITE_BUSY forever: a writer holding `BEGIN EXCLUSIVE` hung the
    snapshot (and SIGTERM with it). The dump fails after the lock timeout, naming the file; the
    lock here is held longer than that, and released afterwards so that nothing hangs."""
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('x');")
    monkeypatch.setattr("lockstep.databases.sqlite.BACKUP_LOCK_TIMEOUT_SECONDS", 0.5)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with contextlib.closing(sqlite3.connect(database_path(database), isolation_level=None)) as writer:
            writer.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(timeout=8)
            writer.execute("ROLLBACK")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(SourceError, match="another process has held a lock") as raised:
            adapter.dump(database, None)
        assert time.monotonic() - started < 5
        assert str(database_path(database)) in raised.value.message
    finally:
        release.set()
        holder.join()


def test_restore_replaces_the_file_and_its_stale_wal(adapter: SqliteAdapter, database: str, tmp_path: Path) -> None:
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('new');")
    data = dump_bytes(adapter, database)
    target = tmp_path / "target.db"
    execute(f"sqlite:///{target}", "CREATE TABLE old (v TEXT); INSERT INTO old VALUES ('old');")
    Path(f"{target}-wal").write_bytes(b"stale wal of the old file")
    adapter.restore(f"sqlite:///{target}", None, io.BytesIO(data), create=False)
    assert not Path(f"{target}-wal").exists()
    assert [table.name for table in adapter.inspect(f"sqlite:///{target}", None).tables] == ["t"]
    assert [path.name for path in tmp_path.iterdir() if "restoring" in path.name] == []


def test_restore_keeps_the_mode_and_owner_of_the_file_it_replaces(
    adapter: SqliteAdapter, database: str, tmp_path: Path
) -> None:
    """The application may read its database through its group, or run as another user: the
    restored file must not come back as a 0600 file owned by whoever ran the restore."""
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('new');")
    data = dump_bytes(adapter, database)
    target = tmp_path / "target.db"
    execute(f"sqlite:///{target}", "CREATE TABLE old (v TEXT);")
    target.chmod(0o640)
    owner = (4321, 4322) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    os.chown(target, *owner)
    adapter.restore(f"sqlite:///{target}", None, io.BytesIO(data), create=False)
    restored = target.stat()
    assert stat.S_IMODE(restored.st_mode) == 0o640
    assert (restored.st_uid, restored.st_gid) == owner
    assert [table.name for table in adapter.inspect(f"sqlite:///{target}", None).tables] == ["t"]


def test_restore_through_a_symlink_replaces_the_file_it_points_to(
    adapter: SqliteAdapter, database: str, tmp_path: Path
) -> None:
    """shared/app.db -> data/app.db: the data goes into data/app.db (atomically, staged next to
    it) and the link stays a link."""
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('new');")
    data = dump_bytes(adapter, database)
    (tmp_path / "data").mkdir()
    (tmp_path / "shared").mkdir()
    real = tmp_path / "data" / "app.db"
    execute(f"sqlite:///{real}", "CREATE TABLE old (v TEXT);")
    Path(f"{real}-journal").write_bytes(b"stale journal of the old file")
    link = tmp_path / "shared" / "app.db"
    link.symlink_to(real)
    adapter.restore(f"sqlite:///{link}", None, io.BytesIO(data), create=False)
    assert link.is_symlink() and link.resolve() == real
    assert [table.name for table in adapter.inspect(f"sqlite:///{real}", None).tables] == ["t"]
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["app.db"]
    assert sorted(path.name for path in (tmp_path / "shared").iterdir()) == ["app.db"]


def test_restore_of_garbage_leaves_the_target_alone(adapter: SqliteAdapter, database: str) -> None:
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('kept');")
    before = adapter.inspect(database, None)
    with pytest.raises(SourceError, match="not a SQLite database"):
        adapter.restore(database, None, io.BytesIO(b"definitely not sqlite" * 100), create=False)
    assert adapter.inspect(database, None) == before
    assert sorted(path.name for path in database_path(database).parent.iterdir()) == ["app.db"]


def test_restore_needs_create_for_a_missing_file(adapter: SqliteAdapter, database: str, tmp_path: Path) -> None:
    execute(database, "CREATE TABLE t (v TEXT);")
    data = dump_bytes(adapter, database)
    missing_url = f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}"
    with pytest.raises(SourceError, match="does not exist"):
        adapter.restore(missing_url, None, io.BytesIO(data), create=False)
    adapter.restore(missing_url, None, io.BytesIO(data), create=True)
    assert [table.name for table in adapter.inspect(missing_url, None).tables] == ["t"]


@pytest.mark.parametrize(
    ("table", "statements", "version"),
    [
        (
            "alembic_version",
            "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('4f2e9c1a7b3d');",
            "4f2e9c1a7b3d",
        ),
        (
            "schema_migrations",
            "CREATE TABLE schema_migrations (version VARCHAR PRIMARY KEY);"
            "INSERT INTO schema_migrations VALUES ('20240101120000'), ('20250301090000');",
            "20250301090000",
        ),
        (
            "django_migrations",
            "CREATE TABLE django_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT, name TEXT);"
            "INSERT INTO django_migrations (app, name) VALUES ('shop', '0001_initial'), ('shop', '0002_prices');",
            "shop.0002_prices",
        ),
    ],
)
def test_migration_version_is_detected(
    adapter: SqliteAdapter, database: str, table: str, statements: str, version: str
) -> None:
    execute(database, statements)
    info = adapter.inspect(database, None)
    assert (info.migration_table, info.migration_version) == (table, version)
    # summarize() reads no rows (deploys, smoke tests and the dashboard ask it), and agrees.
    summary = adapter.summarize(database, None)
    assert (summary.migration_table, summary.migration_version) == (table, version)
    assert summary.tables == [found.name for found in info.tables]
    assert (summary.engine, summary.server_version) == (info.engine, info.server_version)
    assert info.engine == "sqlite" and info.server_version == sqlite3.sqlite_version


def test_dump_of_a_missing_file_names_it_and_creates_nothing(adapter: SqliteAdapter, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no_such.db'}"
    with pytest.raises(SourceError) as raised:
        adapter.dump(url, None)
    assert "no_such.db" in str(raised.value) and "Traceback" not in str(raised.value)
    with pytest.raises(SourceError, match=r"no_such\.db"):
        adapter.inspect(url, None)
    assert list(tmp_path.iterdir()) == []


def test_scratch_files_are_dropped_and_other_files_refused(adapter: SqliteAdapter, database: str) -> None:
    execute(database, "CREATE TABLE t (v TEXT);")
    scratch = adapter.create_scratch(database, None)
    assert database_path(scratch).is_file()
    adapter.drop_database(scratch, None)
    assert not database_path(scratch).exists()
    with pytest.raises(UsageError, match="refusing"):
        adapter.drop_database(database, None)
    assert database_path(database).is_file()


def test_urls_follow_sqlalchemy() -> None:
    assert database_path("sqlite:////srv/app.db") == Path("/srv/app.db")
    assert database_path("sqlite:///app.db") == Path("app.db")
    with pytest.raises(UsageError):
        database_path("sqlite://")


def test_dispatch_by_scheme_and_unknown_schemes() -> None:
    assert isinstance(adapter_for("sqlite:///app.db"), SqliteAdapter)
    assert isinstance(adapter_for("MariaDB://db/shop"), MysqlAdapter)
    with pytest.raises(UsageError) as raised:
        adapter_for("oracle://scott:tiger-secret@db/shop")
    assert "tiger-secret" not in str(raised.value) and "postgresql://" in str(raised.value)


def test_a_wal_mode_database_leaves_no_companion_files_behind(
    adapter: SqliteAdapter, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup copy keeps the source's WAL mode, so inspecting it (or checking the staged
    restore) creates -wal and -shm files; neither the temporary directory nor the target's
    directory may keep them."""
    execute(database, "PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('x');")
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temporary))
    dump = adapter.dump(database, None)
    dump.consistent_info()  # type: ignore[attr-defined]
    data = dump.stdout.read()
    dump.finish()
    assert list(temporary.iterdir()) == []

    target_directory = tmp_path / "restored"
    target_directory.mkdir()
    adapter.restore(f"sqlite:///{target_directory / 'app.db'}", None, io.BytesIO(data), create=True)
    assert [path.name for path in target_directory.iterdir()] == ["app.db"]


def test_a_url_with_options_is_refused_rather_than_opened_without_them(tmp_path: Path) -> None:
    """`?mode=ro` or `?timeout=` would be dropped silently: the URL names a file and nothing else."""
    with pytest.raises(UsageError, match="has the option 'mode'") as raised:
        database_path(f"sqlite:///{tmp_path}/app.db?mode=ro")
    assert raised.value.hint is not None and "takes no options" in raised.value.hint
    assert database_path(f"sqlite:///{tmp_path}/app%20one.db") == tmp_path / "app one.db"


def test_a_new_scratch_file_removes_those_a_killed_verification_left(
    adapter: SqliteAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scratch files untouched for a day were left by a killed verify or diff: the next one
    removes them, with their journal; a recent one (a verification under way) stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, stale_journal, recent = (
        tmp_path / "lockstep_verify_old.sqlite3",
        tmp_path / "lockstep_verify_old.sqlite3-journal",
        tmp_path / "lockstep_verify_new.sqlite3",
    )
    for path in (stale, stale_journal, recent):
        path.write_bytes(b"")
    old = time.time() - STALE_SCRATCH_SECONDS - 60
    os.utime(stale, (old, old))
    new = adapter.create_scratch("sqlite:///unused.db", None)
    assert database_path(new).parent == tmp_path
    assert not stale.exists() and not stale_journal.exists() and recent.exists()
    adapter.drop_database(new, None)


def test_restore_reaches_a_connection_the_application_keeps_open(
    adapter: SqliteAdapter, database: str, tmp_path: Path
) -> None:
    """An application that keeps its database open (a connection pool, a warm slot) must read
    and write the restored data: a file renamed into place left it on the replaced file, where
    every write it made after the restore was lost, and its closing deleted the new file's -wal."""
    execute(database, "PRAGMA journal_mode=WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('snapshot');")
    data = dump_bytes(adapter, database)
    target = tmp_path / "live.db"
    execute(f"sqlite:///{target}", "PRAGMA journal_mode=WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('live');")
    with contextlib.closing(sqlite3.connect(target)) as application:
        assert application.execute("SELECT v FROM t").fetchall() == [("live",)]
        adapter.restore(f"sqlite:///{target}", None, io.BytesIO(data), create=False)
        assert application.execute("SELECT v FROM t").fetchall() == [("snapshot",)]
        with application:
            application.execute("INSERT INTO t VALUES ('written after the restore')")
    with contextlib.closing(sqlite3.connect(target)) as reader:
        assert reader.execute("SELECT v FROM t ORDER BY rowid").fetchall() == [
            ("snapshot",),
            ("written after the restore",),
        ]
    assert [path.name for path in tmp_path.iterdir() if "restoring" in path.name] == []


def test_restore_into_a_wal_database_of_another_page_size_replaces_the_file(
    adapter: SqliteAdapter, tmp_path: Path
) -> None:
    """SQLite cannot copy pages of another size into a WAL database: the checked copy is renamed
    into place instead, and no -wal or -shm of it is left next to the target."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    execute(
        source, "PRAGMA page_size=8192; PRAGMA journal_mode=WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('s');"
    )
    data = dump_bytes(adapter, source)
    (tmp_path / "live").mkdir()
    target = tmp_path / "live" / "app.db"
    execute(f"sqlite:///{target}", "PRAGMA journal_mode=WAL; CREATE TABLE old (v TEXT);")
    adapter.restore(f"sqlite:///{target}", None, io.BytesIO(data), create=False)
    with contextlib.closing(sqlite3.connect(target)) as connection:
        assert connection.execute("SELECT v FROM t").fetchall() == [("s",)]
        assert connection.execute("PRAGMA page_size").fetchone() == (8192,)
    assert sorted(path.name for path in (tmp_path / "live").iterdir()) == ["app.db"]


def test_restore_gives_up_on_a_database_another_process_keeps_locked(
    adapter: SqliteAdapter, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer in the middle of a transaction is waited for, then the restore fails and leaves
    the database as it was: swapping the file under it would lose what it commits next."""
    monkeypatch.setattr("lockstep.databases.sqlite.BACKUP_LOCK_TIMEOUT_SECONDS", 0.5)
    execute(database, "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('snapshot');")
    data = dump_bytes(adapter, database)
    target = tmp_path / "locked.db"
    execute(f"sqlite:///{target}", "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('live');")
    with contextlib.closing(sqlite3.connect(target, isolation_level=None)) as writer:
        writer.execute("BEGIN EXCLUSIVE")
        with pytest.raises(SourceError, match="held a lock") as raised:
            adapter.restore(f"sqlite:///{target}", None, io.BytesIO(data), create=False)
        assert str(target) in raised.value.message
        writer.execute("INSERT INTO t VALUES ('committed after')")
        writer.execute("COMMIT")
    with contextlib.closing(sqlite3.connect(target)) as reader:
        assert reader.execute("SELECT v FROM t ORDER BY rowid").fetchall() == [("live",), ("committed after",)]
    assert [path.name for path in tmp_path.iterdir() if "restoring" in path.name] == []


def test_foreign_keys_to_tables_not_kept_are_cut_out_of_a_create_table_statement() -> None:
    """sqlite_tables.without_foreign_keys: a column's REFERENCES clause (with its constraint
    name and actions) and a table-level FOREIGN KEY item go when their table is not kept; a key
    to a kept table stays; the statement still creates the table."""
    from lockstep.databases.sqlite_tables import without_foreign_keys

    statement = (
        'CREATE TABLE "lines" (id INTEGER PRIMARY KEY, order_id INT NOT NULL CONSTRAINT to_order REFERENCES'
        " [orders] (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED CHECK (order_id > 0),"
        " shop_id INT REFERENCES Shops, note TEXT DEFAULT 'a, (b)',"
        ' FOREIGN KEY (order_id, shop_id) REFERENCES "pairs" (a, b) ON UPDATE SET NULL, UNIQUE (note))'
    )
    cut, referenced = without_foreign_keys(statement, {"lines", "shops"})
    assert referenced == ["orders", "pairs"]
    assert cut == (
        'CREATE TABLE "lines" (id INTEGER PRIMARY KEY, order_id INT NOT NULL '
        " CHECK (order_id > 0), shop_id INT REFERENCES Shops, note TEXT DEFAULT 'a, (b)', UNIQUE (note))"
    )
    import sqlite3

    sqlite3.connect(":memory:").execute(cut)
    assert without_foreign_keys(statement, {"orders", "shops", "pairs"}) == (statement, [])


def test_a_table_restore_keeps_rowids_through_any_name_sqlite_gives_them(tmp_path: Path) -> None:
    """restore_tables: rowids after deletes stay as they were in a table without INTEGER
    PRIMARY KEY, reached as _rowid_ when a column is named rowid; a WITHOUT ROWID table is
    copied by its key; a table whose columns hide all three names is renumbered, and says so."""
    source = tmp_path / "source.db"
    with contextlib.closing(sqlite3.connect(source)) as connection:
        connection.executescript(
            "CREATE TABLE plain (v TEXT); CREATE TABLE named (rowid TEXT, v TEXT);"
            "CREATE TABLE hidden (rowid TEXT, _rowid_ TEXT, oid TEXT);"
            "CREATE TABLE keyed (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
            "INSERT INTO plain VALUES ('a'), ('b'), ('c'); DELETE FROM plain WHERE v = 'a';"
            "INSERT INTO named VALUES ('x', 'a'), ('y', 'b'), ('z', 'c'); DELETE FROM named WHERE v = 'a';"
            "INSERT INTO hidden VALUES ('1', '2', '3'), ('4', '5', '6'); DELETE FROM hidden WHERE oid = '3';"
            "INSERT INTO keyed VALUES ('b', '2'), ('a', '1');"
        )
        connection.commit()
    target = tmp_path / "target.db"
    restored = SqliteAdapter().restore_tables(
        f"sqlite:///{target}", None, source, create=True, tables=["plain", "named", "hidden", "keyed"]
    )
    assert restored.left_out == [
        "rowids of hidden (its columns rowid, _rowid_ and oid hide them; its rows were renumbered)"
    ]
    with contextlib.closing(sqlite3.connect(target)) as connection:
        assert connection.execute("SELECT _rowid_, v FROM plain").fetchall() == [(2, "b"), (3, "c")]
        assert connection.execute("SELECT _rowid_, rowid, v FROM named").fetchall() == [(2, "y", "b"), (3, "z", "c")]
        assert connection.execute("SELECT * FROM hidden").fetchall() == [("4", "5", "6")]
        assert connection.execute("SELECT * FROM keyed").fetchall() == [("a", "1"), ("b", "2")]
