"""The PostgreSQL adapter against the real server on 127.0.0.1:5432 (trust auth, user postgres)."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from lockstep.databases import adapter_for
from lockstep.databases.base import STALE_SCRATCH_SECONDS, ServerLocation
from lockstep.databases.postgresql import PostgresqlAdapter, _tool_command, client_program
from lockstep.databases.postgresql import _connect as postgresql_connect
from lockstep.errors import SourceError, UsageError
from lockstep.process import run_capture
from tests.conftest import missing, require_binary

SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BINARY = bytes(range(256)) * 4
TEXT = "Grüße, 東京, emoji 😀, quote ' and backslash \\"


@pytest.fixture(scope="module")
def adapter() -> PostgresqlAdapter:
    require_binary("pg_dump", "apt-get install postgresql-client")
    require_binary("pg_restore", "apt-get install postgresql-client")
    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5).close()
    except psycopg.Error as error:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}")
    adapter = adapter_for(SERVER_URL)
    assert isinstance(adapter, PostgresqlAdapter)
    return adapter


@pytest.fixture
def database(adapter: PostgresqlAdapter) -> Iterator[str]:
    """A fresh, uniquely named database, dropped after the test."""
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


@pytest.fixture
def scratch(adapter: PostgresqlAdapter) -> Iterator[str]:
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


def execute(url: str, statements: str) -> None:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=ServerLocation.parse(url).database) as connection:
        connection.execute(statements)


def query(url: str, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=ServerLocation.parse(url).database) as connection:
        return connection.execute(statement, parameters or None).fetchall()


def dump_bytes(adapter: PostgresqlAdapter, url: str, password: str | None = None) -> bytes:
    stream = adapter.dump(url, password)
    data = stream.stdout.read()
    stream.finish()
    return data


RICH_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, photo bytea, joined timestamptz DEFAULT now());
CREATE TABLE audit (customer_id int, note text);
CREATE TABLE events_without_key (payload jsonb, amount numeric(12, 2));
INSERT INTO customers (name, photo) SELECT 'customer ' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 500) g;
INSERT INTO events_without_key SELECT jsonb_build_object('n', g), g * 1.25 FROM generate_series(1, 300) g;
CREATE SEQUENCE invoice_numbers START 1000;
SELECT setval('invoice_numbers', 4242);
SELECT setval('customers_id_seq', 9000);
CREATE VIEW big_customers AS SELECT id, upper(name) AS shout FROM customers WHERE id > 490;
CREATE FUNCTION double_it(value int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT value * 2';
CREATE FUNCTION remember() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (NEW.id, 'inserted ' || NEW.name); RETURN NEW; END $$;
CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW EXECUTE FUNCTION remember();
CREATE TABLE documents (id int PRIMARY KEY, body oid);
"""


def fill_rich(url: str) -> None:
    execute(url, RICH_SCHEMA)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=ServerLocation.parse(url).database) as connection:
        connection.execute("INSERT INTO customers (name, photo) VALUES (%s, %s)", (TEXT, BINARY))
        connection.execute("INSERT INTO documents VALUES (1, lo_from_bytea(0, %s))", (BINARY * 50,))


def test_round_trip_preserves_rows_objects_sequences_and_large_objects(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """dump → restore into a scratch database gives identical fingerprints and every object type."""
    fill_rich(database)
    data = dump_bytes(adapter, database)
    assert data.startswith(b"PGDMP")  # the custom format
    adapter.restore(scratch, None, io.BytesIO(data), create=False)

    source, restored = adapter.inspect(database, None), adapter.inspect(scratch, None)
    assert restored.tables == source.tables
    assert {table.name: table.rows for table in restored.tables} == {
        "audit": 1,
        "customers": 501,
        "documents": 1,
        "events_without_key": 300,
    }
    assert query(scratch, "SELECT last_value, is_called FROM invoice_numbers") == [(4242, True)]
    assert query(scratch, "SELECT nextval('customers_id_seq')") == [(9002,)]  # 9001 went to the TEXT row
    assert query(scratch, "SELECT count(*), min(shout) FROM big_customers") == [(11, "CUSTOMER 491")]
    assert query(scratch, "SELECT double_it(21)") == [(42,)]
    assert query(scratch, "SELECT name, photo FROM customers WHERE name = %s", TEXT) == [(TEXT, BINARY)]
    assert query(scratch, "SELECT lo_get(body) FROM documents") == [(BINARY * 50,)]
    execute(scratch, "INSERT INTO customers (name) VALUES ('after restore')")
    assert query(scratch, "SELECT note FROM audit WHERE note LIKE '%after%'") == [("inserted after restore",)]


def test_restore_from_a_file_in_parallel_and_creating_the_database(
    adapter: PostgresqlAdapter, database: str, tmp_path: Path
) -> None:
    """A dump kept in a file restores with pg_restore --jobs into a database it creates."""
    fill_rich(database)
    dump_file = tmp_path / "shop.dump"
    dump_file.write_bytes(dump_bytes(adapter, database))
    target = SERVER_URL.rsplit("/", 1)[0] + "/lockstep_verify_created_by_restore"
    adapter.drop_database(target, None)
    try:
        adapter.restore(target, None, dump_file, create=True)
        assert adapter.inspect(target, None).tables == adapter.inspect(database, None).tables
    finally:
        adapter.drop_database(target, None)


def test_restore_of_a_broken_dump_fails_with_source_error(adapter: PostgresqlAdapter, scratch: str) -> None:
    with pytest.raises(SourceError) as raised:
        adapter.restore(scratch, None, io.BytesIO(b"this is not a dump"), create=False)
    assert "pg_restore" in raised.value.message


def test_checksum_changes_when_one_value_changes(adapter: PostgresqlAdapter, database: str) -> None:
    execute(
        database,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 50) g",
    )
    before = adapter.inspect(database, None).tables
    execute(database, "UPDATE t SET v = 'w' WHERE id = 37")
    after = adapter.inspect(database, None).tables
    assert [table.rows for table in after] == [table.rows for table in before] == [50]
    assert after[0].checksum != before[0].checksum


def test_inspect_of_a_hundred_thousand_rows_is_fast(adapter: PostgresqlAdapter, database: str) -> None:
    execute(
        database,
        "CREATE TABLE big (id int PRIMARY KEY, body text);"
        "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 100000) g",
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
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean);"
            "INSERT INTO schema_migrations VALUES (20240101120000, false), (20250301090000, false)",
            "20250301090000",
        ),
        (
            "django_migrations",
            "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz);"
            "INSERT INTO django_migrations (app, name) VALUES ('shop', '0001_initial'), ('shop', '0002_prices')",
            "shop.0002_prices",
        ),
    ],
)
def test_migration_version_is_detected(
    adapter: PostgresqlAdapter, database: str, table: str, statements: str, version: str
) -> None:
    execute(database, statements)
    info = adapter.inspect(database, None)
    assert (info.migration_table, info.migration_version) == (table, version)
    # summarize() reads no rows (deploys, smoke tests and the dashboard ask it), and agrees.
    summary = adapter.summarize(database, None)
    assert (summary.migration_table, summary.migration_version) == (table, version)
    assert summary.tables == [found.name for found in info.tables]
    assert (summary.engine, summary.server_version) == (info.engine, info.server_version)
    assert info.engine == "postgresql" and info.server_version.startswith("15")


def test_no_migration_table_means_no_version(adapter: PostgresqlAdapter, database: str) -> None:
    info = adapter.inspect(database, None)
    assert (info.tables, info.migration_table, info.migration_version) == ([], None, None)


def test_dump_of_a_missing_database_names_it(adapter: PostgresqlAdapter) -> None:
    url = SERVER_URL.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(SourceError) as raised:
        adapter.dump(url, None)  # the snapshot's transaction is opened first, so it fails at once
    assert "no_such_database_here" in str(raised.value)
    assert "Traceback" not in str(raised.value)
    with pytest.raises(SourceError, match="no_such_database_here"):
        adapter.inspect(url, None)


def test_wrong_credentials_never_show_the_password(adapter: PostgresqlAdapter) -> None:
    url = "postgresql://no_such_role@127.0.0.1:5432/postgres"
    secret = "pw-4f9a1c-not-for-logs"
    with pytest.raises(SourceError) as raised:
        adapter.inspect(url, secret)
    assert "no_such_role" in str(raised.value) and secret not in str(raised.value)
    with pytest.raises(SourceError) as failed:
        adapter.dump(url, secret)
    assert "no_such_role" in str(failed.value) and secret not in str(failed.value)


def test_password_travels_in_the_environment_not_argv(adapter: PostgresqlAdapter, database: str) -> None:
    secret = "pw-71c3-secret"
    stream = adapter.dump(database, secret)
    stream.stdout.read()
    stream.finish()  # trust auth accepts any password: the dump itself works
    assert all(secret not in argument for argument in stream.command.argv)
    assert stream.command.env is not None and stream.command.env["PGPASSWORD"] == secret
    embedded = adapter.dump(database.replace("postgres@", f"postgres:{secret}@"), None)
    embedded.stdout.read()
    embedded.finish()
    assert all(secret not in argument for argument in embedded.command.argv)
    assert embedded.command.env is not None and embedded.command.env["PGPASSWORD"] == secret


def test_drop_refuses_a_database_that_is_not_scratch(adapter: PostgresqlAdapter) -> None:
    with pytest.raises(UsageError, match="refusing"):
        adapter.drop_database(SERVER_URL, None)
    assert query(SERVER_URL, "SELECT 1") == [(1,)]


def test_dispatch_by_scheme() -> None:
    assert isinstance(adapter_for("postgres://db/shop"), PostgresqlAdapter)
    assert isinstance(adapter_for("postgresql+psycopg://db/shop"), PostgresqlAdapter)


def test_the_dump_and_its_fingerprint_come_from_one_snapshot(adapter: PostgresqlAdapter, database: str) -> None:
    """Rows written while the dump runs are in neither the dump nor its fingerprint."""
    execute(database, "CREATE TABLE moving (id serial PRIMARY KEY, body text)")
    execute(database, "INSERT INTO moving (body) SELECT 'row ' || g FROM generate_series(1, 100) g")
    dump = adapter.dump(database, None)
    execute(database, "INSERT INTO moving (body) SELECT 'late ' || g FROM generate_series(1, 50) g")
    info = dump.consistent_info()
    data = dump.stdout.read()
    dump.finish()
    assert {table.name: table.rows for table in info.tables}["moving"] == 100
    assert b"late 1" not in data and b"row 100" in data


def test_data_offsets_are_filled_in_once_and_the_dump_still_restores(
    adapter: PostgresqlAdapter, database: str, scratch: str, tmp_path: Path
) -> None:
    """A piped dump gets the offsets pg_dump would have written to a file; -j restores it the same."""
    from lockstep.databases.postgresql import fill_in_data_offsets

    fill_rich(database)
    dump_file = tmp_path / "piped.dump"
    dump_file.write_bytes(dump_bytes(adapter, database))
    assert fill_in_data_offsets(dump_file)
    assert not fill_in_data_offsets(dump_file)  # already has them: nothing to do
    adapter.restore(scratch, None, dump_file, create=False)
    assert adapter.inspect(scratch, None).tables == adapter.inspect(database, None).tables
    garbage = tmp_path / "garbage.dump"
    garbage.write_bytes(b"not a dump")
    assert not fill_in_data_offsets(garbage)
    assert garbage.read_bytes() == b"not a dump"


def test_checksums_see_changes_in_columns_without_a_hash_function(adapter: PostgresqlAdapter, database: str) -> None:
    """json and point have no hash function: the row-text fallback still notices a changed value."""
    execute(database, "CREATE TABLE shapes (id int PRIMARY KEY, doc json, at point)")
    execute(database, """INSERT INTO shapes VALUES (1, '{"a": 1}', '(1,2)'), (2, '{"b": 2}', '(3,4)')""")

    def checksum() -> str:
        return next(table.checksum for table in adapter.inspect(database, None).tables if table.name == "shapes")

    before = checksum()
    assert before == checksum()
    execute(database, """UPDATE shapes SET doc = '{"a": 2}' WHERE id = 1""")
    assert checksum() != before


def test_tables_with_enums_restore_to_the_same_checksums(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """hash_record_extended hashes an enum by its label's OID, which a restore assigns anew, so
    every table with an enum failed its restore check. Enums, and the arrays, domains,
    composites and ranges built on them, are hashed by their text; a change is still seen."""
    execute(
        database,
        """
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN good_mood AS mood CHECK (VALUE <> 'sad');
        CREATE TYPE mood_pair AS (first mood, second mood);
        CREATE TYPE mood_range AS RANGE (subtype = mood);
        CREATE TABLE feelings (id int PRIMARY KEY, now mood, history mood[], best good_mood, pair mood_pair,
                               span mood_range, note text);
        INSERT INTO feelings SELECT g, 'ok', ARRAY['sad', 'happy']::mood[], 'happy', ROW('ok', 'sad')::mood_pair,
                                    mood_range('sad', 'happy'), 'n' || g FROM generate_series(1, 50) g;
        """,
    )
    # A second enum made first in the restore's order shifts every OID there.
    execute(scratch, "CREATE TYPE unrelated AS ENUM ('x', 'y', 'z')")
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    source, restored = adapter.inspect(database, None), adapter.inspect(scratch, None)
    assert restored.tables == source.tables
    execute(database, "UPDATE feelings SET history = ARRAY['ok']::mood[] WHERE id = 7")
    assert adapter.inspect(database, None).tables != source.tables


def test_the_text_fallback_hashes_every_column_even_beside_one_named_row_data(
    adapter: PostgresqlAdapter, database: str
) -> None:
    """`row_data::text` meant the column of that name, not the row: a change elsewhere went unseen."""
    execute(database, "CREATE TABLE shapes (id int PRIMARY KEY, doc json, row_data text)")
    execute(database, """INSERT INTO shapes VALUES (1, '{"a": 1}', 'same'), (2, '{"b": 2}', 'same')""")
    before = adapter.inspect(database, None).tables
    execute(database, """UPDATE shapes SET doc = '{"a": 2}' WHERE id = 1""")
    assert adapter.inspect(database, None).tables != before
    execute(database, "ALTER TABLE shapes RENAME COLUMN row_data TO label")
    ((rows, total),) = query(database, "SELECT count(*), sum(hashtextextended(t::text, 0)) FROM shapes AS t")
    (table,) = adapter.inspect(database, None).tables
    assert (table.rows, table.checksum) == (rows, f"{int(total) % 2**64:016x}")  # as manifests recorded it


def test_checksums_equal_the_whole_row_hash_manifests_recorded(adapter: PostgresqlAdapter, database: str) -> None:
    """The row hash is built from the live columns, ROW(a, b, ...), where earlier versions hashed
    the whole-row reference: the checksums must stay the same, or every older manifest's restore
    would fail its check. Dropped and generated columns, domains, arrays, composites, NULLs,
    collations, a one-column table and a table without columns."""
    execute(
        database,
        """
        CREATE DOMAIN positive AS int CHECK (VALUE > 0);
        CREATE TYPE pair AS (left_side int, right_side text);
        CREATE TABLE mixed (
            id bigint PRIMARY KEY, gone text, label text COLLATE "C", amount numeric(10, 3),
            tags text[], point_pair pair, count positive, doc jsonb, at timestamptz, flag boolean,
            raw bytea, "row_data" text, twice bigint GENERATED ALWAYS AS (id * 2) STORED
        );
        INSERT INTO mixed (id, gone, label, amount, tags, point_pair, count, doc, at, flag, raw, row_data)
        SELECT g, 'x', 'label ' || g, g / 7.0, ARRAY['a', g::text], ROW(g, 'p' || g)::pair, g,
               jsonb_build_object('g', g), '2024-01-01 00:00+00'::timestamptz + g * interval '1 hour',
               g % 2 = 0, decode(md5(g::text), 'hex'), 'shadow'
        FROM generate_series(1, 200) g;
        INSERT INTO mixed (id) VALUES (1000);
        ALTER TABLE mixed DROP COLUMN gone;
        CREATE TABLE single (value text);
        INSERT INTO single VALUES ('one'), (NULL), ('three');
        CREATE TABLE nothing ();
        INSERT INTO nothing DEFAULT VALUES;
        """,
    )
    found = {table.name: table for table in adapter.inspect(database, None).tables}
    for table in ("mixed", "single", "nothing"):
        ((rows, total),) = query(database, f"SELECT count(*), sum(hash_record_extended(t, 0)) FROM {table} AS t")
        assert found[table].rows == rows
        assert found[table].checksum == f"{int(total or 0) % 2**64:016x}", table


def _socket_directory() -> str:
    (directory,) = query(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "SELECT split_part(current_setting('unix_socket_directories'), ',', 1)",
    )[0]
    return str(directory).strip()


def test_urls_naming_the_unix_socket_reach_the_server(adapter: PostgresqlAdapter, database: str) -> None:
    """libpq's two ways to name a socket directory: percent-encoded as the host (case kept), or
    ?host=DIR; both for psycopg's connections and for pg_dump."""
    execute(database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    directory = _socket_directory()
    name = ServerLocation.parse(database).database
    encoded = directory.replace("/", "%2F")
    for url in (f"postgresql://postgres@{encoded}/{name}", f"postgresql:///{name}?host={directory}&user=postgres"):
        assert [(table.name, table.rows) for table in adapter.inspect(url, None).tables] == [("t", 2)], url
        assert dump_bytes(adapter, url).startswith(b"PGDMP"), url


def test_libpq_options_in_the_url_are_applied_not_dropped(adapter: PostgresqlAdapter, database: str) -> None:
    """psycopg's connections get the options as keywords, pg_dump and pg_restore as libpq's
    environment variables. An sslmode that cannot be met must fail both ways: before, the option
    was silently dropped and both connected without it."""
    name = ServerLocation.parse(database).database
    unmet = ServerLocation.parse(f"{database}?sslmode=verify-full&sslrootcert=/nonexistent/root.crt")
    with pytest.raises(SourceError) as connecting:
        adapter.inspect(f"{database}?sslmode=verify-full&sslrootcert=/nonexistent/root.crt", None)
    assert "SSL" in connecting.value.message or "root certificate" in connecting.value.message
    with pytest.raises(SourceError):
        run_capture(_tool_command(unmet, None, "psql", "-Atc", "SELECT 1", name), timeout=30)
    named = ServerLocation.parse(f"{database}?application_name=lockstep-url-test")
    shown = run_capture(_tool_command(named, None, "psql", "-Atc", "SHOW application_name", name), timeout=30)
    assert shown.strip() == "lockstep-url-test"
    with postgresql_connect(named, None, name) as connection:
        assert connection.execute("SHOW application_name").fetchone() == ("lockstep-url-test",)


def test_unknown_and_secret_url_options_are_refused(adapter: PostgresqlAdapter, database: str) -> None:
    with pytest.raises(UsageError) as unknown:
        adapter.inspect(f"{database}?sslmod=require", None)
    assert "'sslmod'" in unknown.value.message and "sslmode" in (unknown.value.hint or "")
    with pytest.raises(UsageError) as secret:
        adapter.inspect(f"{database}?password=hunter2-secret", None)
    assert "password" in secret.value.message and "hunter2-secret" not in str(secret.value)


def test_a_database_name_that_looks_like_a_connection_string_round_trips(adapter: PostgresqlAdapter) -> None:
    """pg_dump's database argument and pg_restore's --dbname take a name with '=' (or one that
    starts with postgresql://) as a connection string; lockstep hands them a quoted dbname=."""
    source, target = "lockstep odd=name 'q' \\b", "lockstep odd=target"
    server = "postgresql://postgres@127.0.0.1:5432"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        for name in (source, target):
            connection.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(name)))
        connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(source)))
    source_url, target_url = f"{server}/{quote(source)}", f"{server}/{quote(target)}"
    try:
        execute(source_url, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
        dump = dump_bytes(adapter, source_url)
        info = adapter.restore_and_inspect(target_url, None, io.BytesIO(dump), create=True)
        assert [(table.name, table.rows) for table in info.tables] == [("t", 10)]
    finally:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
            for name in (source, target):
                statement = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                connection.execute(statement.format(psycopg.sql.Identifier(name)))


@pytest.fixture
def latin1_database(adapter: PostgresqlAdapter) -> Iterator[str]:
    """A LATIN1 database with accented text, a table whose LATIN1 name is also valid UTF-8
    ("Ã©" is the bytes C3 A9, UTF-8's "é"), indexes on it, and one name that is not UTF-8."""
    url = adapter.create_scratch(SERVER_URL, None)
    name = ServerLocation.parse(url).database
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        connection.execute(psycopg.sql.SQL("DROP DATABASE {}").format(psycopg.sql.Identifier(name)))
        create = "CREATE DATABASE {} TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'"
        connection.execute(psycopg.sql.SQL(create).format(psycopg.sql.Identifier(name)))
    execute(
        url,
        """
        CREATE TABLE people (id int PRIMARY KEY, name text, city varchar(40));
        INSERT INTO people SELECT g, 'Grüße ' || g, 'Zürich' FROM generate_series(1, 200) g;
        CREATE INDEX people_city ON people (city);
        CREATE TABLE "Ã©" (id int PRIMARY KEY, note text);
        CREATE INDEX "Ã©_note" ON "Ã©" (note);
        INSERT INTO "Ã©" SELECT g, 'café' FROM generate_series(1, 50) g;
        CREATE TABLE "tëst" (id int PRIMARY KEY);
        INSERT INTO "tëst" VALUES (1);
        """,
    )
    yield url
    adapter.drop_database(url, None)


def encoding_of(url: str) -> str:
    statement = "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s"
    return str(query(SERVER_URL, statement, ServerLocation.parse(url).database)[0][0])


def test_a_latin1_database_verifies_in_a_scratch_database_made_latin1(
    adapter: PostgresqlAdapter, latin1_database: str, scratch: str
) -> None:
    """verify and diff restore into a scratch database the server made UTF8: the text came back
    converted, so every table with accents failed its checksum; a LATIN1 name whose bytes are
    valid UTF-8 named another table and failed the restore."""
    info = adapter.restore_and_inspect(scratch, None, io.BytesIO(dump_bytes(adapter, latin1_database)), create=False)
    assert encoding_of(scratch) == "LATIN1"
    assert info.tables == adapter.inspect(latin1_database, None).tables
    assert [
        name for (name,) in query(scratch, "SELECT indexname FROM pg_indexes WHERE tablename = 'Ã©' ORDER BY 1")
    ] == [
        "Ã©_note",
        "Ã©_pkey",
    ]


def admin(statement: str) -> None:
    """A statement that runs outside a transaction (CREATE DATABASE, roles), as postgres."""
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        connection.execute(statement)  # type: ignore[arg-type]


def drop_named(*names: str) -> None:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        for name in names:
            statement = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            connection.execute(statement.format(psycopg.sql.Identifier(name)))


def test_a_latin1_dump_creates_a_latin1_database_and_refuses_a_utf8_one(
    adapter: PostgresqlAdapter, latin1_database: str, tmp_path: Path
) -> None:
    dump = dump_bytes(adapter, latin1_database)
    server = SERVER_URL.rsplit("/", 1)[0]
    created, from_file, existing = "lockstep_test_latin1_created", "lockstep_test_latin1_file", "lockstep_test_utf8"
    drop_named(created, from_file, existing)
    try:
        info = adapter.restore_and_inspect(f"{server}/{created}", None, io.BytesIO(dump), create=True)
        assert encoding_of(f"{server}/{created}") == "LATIN1"
        assert info.tables == adapter.inspect(latin1_database, None).tables
        (tmp_path / "latin1.dump").write_bytes(dump)
        adapter.restore(f"{server}/{from_file}", None, tmp_path / "latin1.dump", create=True)
        assert encoding_of(f"{server}/{from_file}") == "LATIN1"
        # An existing database in another encoding is not lockstep's to re-create: refused, untouched.
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {existing}")
        execute(f"{server}/{existing}", "CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1)")
        with pytest.raises(UsageError) as refused:
            adapter.restore(f"{server}/{existing}", None, io.BytesIO(dump), create=True)
        assert "UTF8" in refused.value.message and "LATIN1" in refused.value.message
        assert "ENCODING 'LATIN1'" in (refused.value.hint or "")
        assert query(f"{server}/{existing}", "SELECT * FROM keep_me") == [(1,)]
    finally:
        drop_named(created, from_file, existing)


def test_a_public_table_with_a_dot_and_a_schemas_table_get_names_of_their_own(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """The public table "billing.invoices" and the table invoices of the schema billing were both
    named billing.invoices in the manifest: one hid the other's rows from every check."""
    execute(
        database,
        """
        CREATE SCHEMA billing;
        CREATE TABLE billing.invoices (id int PRIMARY KEY);
        INSERT INTO billing.invoices SELECT generate_series(1, 10);
        CREATE TABLE public."billing.invoices" (id int PRIMARY KEY);
        INSERT INTO public."billing.invoices" SELECT generate_series(1, 3);
        CREATE SCHEMA "odd""schema";
        CREATE TABLE "odd""schema".t (id int);
        """,
    )
    source = adapter.inspect(database, None)
    assert {(table.name, table.rows) for table in source.tables} == {
        ("billing.invoices", 10),
        ('"billing.invoices"', 3),
        ('"odd""schema".t', 0),
    }
    restored = adapter.restore_and_inspect(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    assert restored.tables == source.tables


def test_a_new_scratch_database_drops_those_a_killed_verification_left(adapter: PostgresqlAdapter) -> None:
    """A verify or diff killed with -9 left its scratch database (a whole copy of the data)
    behind for good. Names are dated now; the next scratch database drops those over a day old,
    unless one is still in use. Undated names (older lockstep versions) are never guessed at."""
    day_and_more = int(time.time()) - STALE_SCRATCH_SECONDS - 60
    stale = f"lockstep_verify_{day_and_more:08x}_0123456789ab"
    in_use = f"lockstep_verify_{day_and_more:08x}_ba9876543210"
    recent, undated = f"lockstep_verify_{int(time.time()):08x}_0123456789ab", "lockstep_verify_0123456789ab"
    names = (stale, in_use, recent, undated)
    drop_named(*names)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        for name in names:
            connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    holder = psycopg.connect(host="127.0.0.1", user="postgres", dbname=in_use)
    new = adapter.create_scratch(SERVER_URL, None)
    try:
        listed = "SELECT datname FROM pg_database WHERE datname LIKE 'lockstep_verify_%'"
        left = {name for (name,) in query(SERVER_URL, listed)}
        assert stale not in left
        assert {in_use, recent, undated, ServerLocation.parse(new).database} <= left
    finally:
        holder.close()
        adapter.drop_database(new, None)
        drop_named(*names)


def test_checksums_of_tables_hashed_as_text_do_not_depend_on_the_session_settings(
    adapter: PostgresqlAdapter, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table with a json column is hashed over its rows' text, and a timestamptz's text follows
    TimeZone: a snapshot taken by cron in UTC failed its restore check run from a shell in
    Berlin. The settings a value's text depends on are pinned now; a manifest of the legacy
    algorithm is still checked in the session's own settings, as it was made."""
    execute(
        database,
        """
        CREATE TABLE events (id int, at timestamptz, day date, took interval, price money, ratio float8,
                             payload json);
        INSERT INTO events VALUES (1, '2026-11-23 10:00+00', '2026-11-23', '1 day 2 hours', 12.5, 0.1,
                                   '{"a": 1}');
        """,
    )
    monkeypatch.setenv("PGTZ", "UTC")
    monkeypatch.setenv("PGDATESTYLE", "ISO, MDY")
    in_utc = adapter.inspect(database, None).tables
    legacy_in_utc = adapter.inspect_as(database, None, "row-hash-sum").tables
    monkeypatch.setenv("PGTZ", "Europe/Berlin")
    monkeypatch.setenv("PGDATESTYLE", "German, DMY")
    monkeypatch.setenv("PGOPTIONS", "-c IntervalStyle=sql_standard -c extra_float_digits=0")
    assert adapter.inspect(database, None).tables == in_utc
    assert adapter.inspect_as(database, None, "row-hash-sum").tables != legacy_in_utc


def test_tables_with_oid_alias_columns_restore_to_the_same_checksums(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """A regclass or regtype value is the OID of the table or type it names, and a restore gives
    those new OIDs: an audit table with a regclass column failed every restore check. Such
    columns are hashed by their text (schema-qualified whatever search_path says), and a value
    naming another table still changes the checksum."""
    execute(
        database,
        """
        CREATE SCHEMA billing;
        CREATE TABLE billing.invoices (id int);
        CREATE TYPE money_kind AS (amount numeric);
        CREATE TABLE audit (relation regclass, kind regtype, kinds regtype[], n int);
        INSERT INTO audit VALUES ('billing.invoices', 'money_kind', '{money_kind,int4}', 1),
                                 ('audit', 'int4', '{}', 2);
        """,
    )
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    assert adapter.inspect(scratch, None).tables == adapter.inspect(database, None).tables
    # A manifest of row-hash-sum-2 is still checked as it was made: by the OIDs.
    assert adapter.inspect_as(scratch, None, "row-hash-sum-2").tables != (
        adapter.inspect_as(database, None, "row-hash-sum-2").tables
    )

    before = adapter.inspect(database, None).tables
    execute(database, "UPDATE audit SET relation = 'billing.invoices' WHERE n = 2")
    assert adapter.inspect(database, None).tables != before


def test_inheritance_children_whose_columns_a_restore_reorders_keep_their_checksums(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """pg_dump re-creates an inheritance child with INHERITS (parent), the parent's columns
    first: a column added to the parent later, or a table attached with ALTER TABLE ... INHERIT,
    comes back in another order, and the child failed every restore check with its rows intact."""
    execute(
        database,
        """
        CREATE TABLE events (id int, at date);
        CREATE TABLE clicks (target text) INHERITS (events);
        ALTER TABLE events ADD COLUMN source text;
        CREATE TABLE legacy_events (note text, id int, at date, source text);
        ALTER TABLE legacy_events INHERIT events;
        INSERT INTO clicks VALUES (1, '2026-11-23', 'button', 'web');
        INSERT INTO legacy_events VALUES ('old', 2, '2001-01-01', 'import');
        """,
    )
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    columns = (
        "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
    )
    assert query(database, columns, "clicks") != query(scratch, columns, "clicks")  # reordered
    assert adapter.inspect(scratch, None).tables == adapter.inspect(database, None).tables

    before = adapter.inspect(database, None).tables
    execute(database, "UPDATE legacy_events SET note = 'older'")
    assert adapter.inspect(database, None).tables != before


def test_an_inheritance_parent_is_counted_without_its_childrens_rows(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """A parent's count and checksum included its children's rows, which the manifest lists
    under the children's own names: a row added to a child changed two entries. Since
    row-hash-sum-4 a parent is read FROM ONLY; a row-hash-sum-3 manifest is still checked as it
    was made, children's rows included."""
    execute(
        database,
        """
        CREATE TABLE events (id int, at date);
        CREATE TABLE clicks (target text) INHERITS (events);
        INSERT INTO events VALUES (1, '2026-11-23');
        INSERT INTO clicks VALUES (2, '2026-11-23', 'button'), (3, '2026-11-24', 'link');
        """,
    )
    rows = {table.name: table.rows for table in adapter.inspect(database, None).tables}
    assert rows == {"events": 1, "clicks": 2}
    assert adapter.checksum_algorithm == "row-hash-sum-4"
    old_rows = {table.name: table.rows for table in adapter.inspect_as(database, None, "row-hash-sum-3").tables}
    assert old_rows == {"events": 3, "clicks": 2}

    stream = adapter.dump(database, None)
    data = stream.stdout.read()
    assert stream.consistent_info().tables == adapter.inspect(database, None).tables
    stream.finish()
    restored = adapter.restore_and_inspect(scratch, None, io.BytesIO(data), create=False, algorithm="row-hash-sum-3")
    assert restored.tables == adapter.inspect_as(database, None, "row-hash-sum-3").tables

    before = {table.name: table for table in adapter.inspect(database, None).tables}
    execute(database, "INSERT INTO clicks VALUES (4, '2026-11-25', 'menu')")
    after = {table.name: table for table in adapter.inspect(database, None).tables}
    assert after["events"] == before["events"] and after["clicks"] != before["clicks"]


def test_a_statement_timeout_of_the_role_does_not_cancel_the_fingerprint_or_the_restore(
    adapter: PostgresqlAdapter, database: str, scratch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Application roles often have a statement_timeout (ALTER ROLE ... SET): the fingerprint of
    a big table was cancelled, so the snapshot failed where pg_dump itself (which sets it to 0)
    went through, and so did the restore's check. Here the setting comes from PGOPTIONS, as it
    would from the role."""
    execute(database, "CREATE TABLE events AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 100000) g")
    expected = adapter.inspect(database, None).tables
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5 -c idle_in_transaction_session_timeout=5")
    stream = adapter.dump(database, None)
    data = stream.stdout.read()
    assert stream.consistent_info().tables == expected
    stream.finish()
    assert adapter.restore_and_inspect(scratch, None, io.BytesIO(data), create=False).tables == expected


def test_a_role_without_bypassrls_checks_every_row_of_a_table_with_forced_row_security(
    adapter: PostgresqlAdapter, database: str
) -> None:
    """A restore run by a role without superuser or BYPASSRLS owns what it restores, and FORCE
    ROW LEVEL SECURITY applies a table's policies to its owner: the check counted the rows the
    policy let the role see (none) and reported the restore damaged. It counts every row now,
    and the table keeps FORCE."""
    execute(
        database,
        """
        CREATE TABLE secrets (id int, owner text);
        INSERT INTO secrets VALUES (1, 'alice'), (2, 'bob');
        ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
        ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
        CREATE POLICY own_rows ON secrets USING (owner = current_user);
        """,
    )
    expected = adapter.inspect(database, None).tables
    data = dump_bytes(adapter, database)
    suffix = uuid.uuid4().hex[:8]
    role, target = f"lockstep_test_{suffix}", f"lockstep_test_{suffix}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        admin(f'CREATE DATABASE "{target}" OWNER "{role}"')
        url = f"postgresql://{role}@127.0.0.1:5432/{target}"
        assert adapter.restore_and_inspect(url, None, io.BytesIO(data), create=False).tables == expected
        assert adapter.inspect(url, None).tables == expected  # the check after a restore from a file
        forced = "SELECT relforcerowsecurity, relowner::regrole::text FROM pg_class WHERE relname = 'secrets'"
        assert query(url, forced) == [(True, role)]
    finally:
        drop_named(target)
        admin(f'DROP ROLE IF EXISTS "{role}"')


def test_a_database_the_restore_creates_keeps_the_dumped_databases_icu_collation(adapter: PostgresqlAdapter) -> None:
    """A database lockstep created for `restore --to` was made from template1 (libc, C.UTF-8
    here) whatever the dumped database's collation: an ICU database's ORDER BY name gave
    "a, B, c" and the restored one "B, a, c". It takes the dump's locale provider and locales."""
    suffix = uuid.uuid4().hex[:8]
    source, target = f"lockstep_test_{suffix}_icu", f"lockstep_test_{suffix}_copy"
    try:
        admin(f"CREATE DATABASE \"{source}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'")
        source_url, target_url = (SERVER_URL.rsplit("/", 1)[0] + "/" + name for name in (source, target))
        execute(source_url, "CREATE TABLE names (name text); INSERT INTO names VALUES ('B'), ('a'), ('c')")
        adapter.restore(target_url, None, io.BytesIO(dump_bytes(adapter, source_url)), create=True)
        collation = "SELECT datlocprovider, daticulocale FROM pg_database WHERE datname = current_database()"
        assert query(target_url, collation) == query(source_url, collation) == [("i", "en")]
        assert query(target_url, "SELECT string_agg(name, ', ' ORDER BY name) FROM names") == [("a, B, c",)]
    finally:
        drop_named(source, target)


BEYOND_TABLES = """
CREATE TABLE orders (id serial PRIMARY KEY, total numeric(10, 2));
INSERT INTO orders (total) SELECT g * 1.5 FROM generate_series(1, 40) g;
CREATE SEQUENCE invoice_numbers START 1000;
SELECT setval('invoice_numbers', 4242);
CREATE SEQUENCE ticket_numbers;
SELECT setval('ticket_numbers', 77, false);
CREATE MATERIALIZED VIEW big_orders AS SELECT id, total FROM orders WHERE total > 30;
CREATE MATERIALIZED VIEW order_totals AS SELECT sum(total) AS total FROM orders WITH NO DATA;
"""


def beyond_tables(info: Any) -> tuple[Any, Any, Any]:
    return info.sequences, info.large_objects, info.materialized_views


def test_sequences_and_materialized_views_are_fingerprinted_as_the_dump_restores_them(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """Sequence values (is_called too) and materialized views, populated or WITH NO DATA, are in
    the fingerprint: from the dump's own table of contents and snapshot, and after a restore
    (the streamed one, which sets sequences and refreshes views in its last step) the same."""
    execute(database, BEYOND_TABLES)
    stream = adapter.dump(database, None)
    data = stream.stdout.read()
    dumped = stream.consistent_info()
    stream.finish()
    assert [(s.name, s.last_value, s.is_called) for s in dumped.sequences or []] == [
        ("invoice_numbers", 4242, True),
        ("orders_id_seq", 40, True),
        ("ticket_numbers", 77, False),
    ]
    assert dumped.large_objects is not None and dumped.large_objects.count == 0
    views = {view.name: (view.populated, view.rows) for view in dumped.materialized_views or []}
    assert views == {"big_orders": (True, 20), "order_totals": (False, 0)}
    assert beyond_tables(adapter.inspect(database, None)) == beyond_tables(dumped)

    restored = adapter.restore_and_inspect(scratch, None, io.BytesIO(data), create=False)
    assert beyond_tables(restored) == beyond_tables(dumped)
    assert query(scratch, "SELECT relispopulated FROM pg_class WHERE relname = 'order_totals'") == [(False,)]

    execute(database, "SELECT nextval('invoice_numbers'); REFRESH MATERIALIZED VIEW order_totals")
    moved = adapter.inspect(database, None)
    assert moved.sequences != dumped.sequences and moved.materialized_views != dumped.materialized_views


def test_large_objects_round_trip_and_their_contents_are_fingerprinted(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """Large objects live in pg_largeobject, which no table lists: their count and a checksum
    of their OIDs and contents are in the fingerprint, and a restore brings back the same."""
    execute(database, "CREATE TABLE documents (id int PRIMARY KEY, body oid)")
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=ServerLocation.parse(database).database) as c:
        c.execute("INSERT INTO documents VALUES (1, lo_from_bytea(0, %s))", (BINARY * 50,))
        c.execute("INSERT INTO documents VALUES (2, lo_from_bytea(0, %s))", (b"",))
    stream = adapter.dump(database, None)
    data = stream.stdout.read()
    dumped = stream.consistent_info()
    stream.finish()
    assert dumped.large_objects is not None and dumped.large_objects.count == 2
    assert dumped.large_objects == adapter.inspect(database, None).large_objects

    restored = adapter.restore_and_inspect(scratch, None, io.BytesIO(data), create=False)
    assert restored.large_objects == dumped.large_objects
    assert query(scratch, "SELECT lo_get(body) FROM documents WHERE id = 1") == [(BINARY * 50,)]

    execute(scratch, "SELECT lo_put(body, 10, '\\x00') FROM documents WHERE id = 1")
    changed = adapter.inspect(scratch, None).large_objects
    assert changed is not None and changed.count == 2 and changed.checksum != dumped.large_objects.checksum


def test_a_schema_only_dump_records_no_sequence_values_or_large_objects(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """pg_dump --schema-only sets no sequence, holds no large object and refreshes no
    materialized view: the fingerprint says so, and a restore of it gives exactly that."""
    execute(database, BEYOND_TABLES + "SELECT lo_from_bytea(0, 'memo');")
    stream = adapter.dump(database, None, schema_only=True)
    data = stream.stdout.read()
    dumped = stream.consistent_info()
    stream.finish()
    assert dumped.sequences == []
    assert dumped.large_objects is not None and dumped.large_objects.count == 0
    assert {view.name: view.populated for view in dumped.materialized_views or []} == {
        "big_orders": False,
        "order_totals": False,
    }
    restored = adapter.restore_and_inspect(scratch, None, io.BytesIO(data), create=False)
    assert (restored.large_objects, restored.materialized_views) == (dumped.large_objects, dumped.materialized_views)


def test_a_schema_only_dump_lists_the_tables_without_reading_a_row(adapter: PostgresqlAdapter, database: str) -> None:
    """A schema-only snapshot fingerprinted every row only to record each table with 0 rows. The
    proof that no row is read now: a role that may not read a table's rows (row-level security
    applies to it, and the fingerprint turns row_security off to see every row or fail) still
    gets its schema-only dump, with the table listed, empty."""
    role = f"lockstep_test_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        execute(
            database,
            f"""
            CREATE TABLE secrets (id int, owner text);
            INSERT INTO secrets VALUES (1, 'alice'), (2, 'bob');
            ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
            CREATE POLICY own_rows ON secrets USING (owner = current_user);
            GRANT SELECT ON secrets TO "{role}";
            """,
        )
        url = f"postgresql://{role}@127.0.0.1:5432/{ServerLocation.parse(database).database}"
        with pytest.raises(SourceError) as refused:  # reading the rows is refused to this role
            adapter.inspect(url, None)
        assert "row-level security" in refused.value.message and "BYPASSRLS" in (refused.value.hint or "")
        stream = adapter.dump(url, None, schema_only=True)
        data = stream.stdout.read()
        info = stream.consistent_info()
        stream.finish()
        assert b"own_rows" in data
        assert [(table.name, table.rows, table.checksum) for table in info.tables] == [
            ("secrets", 0, adapter.empty_table_checksum)
        ]
    finally:
        execute(database, f'DROP OWNED BY "{role}"')
        admin(f'DROP ROLE IF EXISTS "{role}"')


def test_sequence_values_are_the_dumps_own_while_the_application_writes(
    adapter: PostgresqlAdapter, database: str, scratch: str
) -> None:
    """Sequences ignore snapshots: nextval during the dump moves them for every session, the
    dump's included. The manifest takes the values from the dump's table of contents, so they
    are exactly what its restore sets, whatever was handed out while the snapshot ran."""
    execute(database, "CREATE TABLE orders (id serial PRIMARY KEY); INSERT INTO orders DEFAULT VALUES;")
    stream = adapter.dump(database, None)
    first = stream.stdout.read(1)  # pg_dump has read the sequences: it writes its contents first
    execute(database, "INSERT INTO orders SELECT FROM generate_series(1, 5); SELECT nextval('orders_id_seq')")
    data = first + stream.stdout.read()
    info = stream.consistent_info()
    stream.finish()
    assert [(s.name, s.last_value) for s in info.sequences or []] == [("orders_id_seq", 1)]
    assert query(database, "SELECT last_value FROM orders_id_seq") == [(7,)]
    restored = adapter.restore_and_inspect(scratch, None, io.BytesIO(data), create=False)
    assert restored.sequences == info.sequences
    assert restored.tables == info.tables


DEBIAN_WRAPPER = Path("/usr/share/postgresql-common/pg_wrapper")


def test_debian_s_pg_wrapper_is_passed_over_for_the_program_it_would_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Perl wrapper costs ~30 ms before every pg_dump and pg_restore starts."""
    found = require_binary("pg_dump", "apt-get install postgresql-client")
    if Path(found).resolve() != DEBIAN_WRAPPER:
        missing(f"pg_dump here is {found}, not Debian's pg_wrapper")
    monkeypatch.delenv("PGCLUSTER", raising=False)
    chosen = Path(client_program.__wrapped__("pg_dump"))
    assert chosen.parent.parent.parent == Path("/usr/lib/postgresql")
    newest = max(int(path.name) for path in Path("/usr/lib/postgresql").iterdir() if path.name.isdigit())
    assert chosen == Path(f"/usr/lib/postgresql/{newest}/bin/pg_dump")
    # A version chosen for the wrapper stays its choice.
    monkeypatch.setenv("PGCLUSTER", f"{newest}/main")
    assert client_program.__wrapped__("pg_dump") == "pg_dump"
