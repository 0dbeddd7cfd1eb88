"""COPY text turned into binary COPY rows (copy_binary.py, _copy_binary.c), against the real server.

The converter is right when the server, reading its binary rows, stores exactly what it stores
reading the text: each table below is written out as COPY text the way pg_dump writes it
(DateStyle ISO, in several time zones), converted, loaded into a twin in binary form, and both
tables' rows compared as text, where a wrong scale of a numeric or a microsecond shows.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import psycopg
import pytest

from lockstep.databases import copy_binary, postgresql_loader
from lockstep.databases.base import ServerLocation
from lockstep.databases.postgresql import PostgresqlAdapter
from lockstep.errors import SourceError
from tests.conftest import missing
from tests.databases.test_postgresql import (
    SERVER_URL,
    adapter,  # noqa: F401 - a fixture
    dump_bytes,
    execute,
)


@pytest.fixture(autouse=True)
def _converter_built() -> None:
    """Skipped locally without the C extension; in CI (LOCKSTEP_REQUIRE_ALL) that is a failure."""
    if copy_binary.convert is None:
        missing("the _copy_binary extension is not built (a C compiler at install time)")


COLUMNS = {
    "small": "int2",
    "medium": "int4",
    "big": "int8",
    "words": "text",
    "short": "varchar(20)",
    "padded": "char(6)",
    "document": "json",
    "binary_document": "jsonb",
    "flag": "bool",
    "moment": "timestamptz",
    "wall_clock": "timestamp",
    "day": "date",
    "amount": "numeric",
    "price": "numeric(12,2)",
    "identifier": "uuid",
}

VALUES = {
    "small": ["-32768", "32767", "0", "-1"],
    "medium": ["-2147483648", "2147483647", "7"],
    "big": ["-9223372036854775808", "9223372036854775807", "1234567890123"],
    "words": [
        "plain",
        "",
        "tab\there",
        "line\nbreak",
        "carriage\rreturn",
        "back\\slash",
        "\\.",
        "\\N",
        "ünïcødé ✓ 𝄞",
        "\b\f\v",
        " trailing ",
    ],
    "short": ["x", "twenty characters!!!"],
    "padded": ["ab", "abcdef", ""],
    "document": ['{"a": [1, 2.50, "x\\ny"], "b": null}', '"\\u00e9"', "[]"],
    "binary_document": ['{"z": 1, "a": {"nested": [true, false]}}', '"tab\\there"', "3.140", '{"é": "ü"}'],
    "flag": ["true", "false"],
    "moment": [
        "2022-11-04 10:18:00.128309+00",
        "2000-01-01 00:00:00+00",
        "1999-12-31 23:59:59.999999+00",
        "2022-06-01 12:00:00.5+05:30",
        "1900-01-01 00:00:00+00",
        "1850-06-01 12:00:00+00",
        "0044-03-15 12:00:00 BC",
        "4713-11-24 00:00:00+00 BC",
        "12345-06-07 08:09:10.000001+00",
        "294276-12-31 23:59:59.999999+00",
        "infinity",
        "-infinity",
    ],
    "wall_clock": [
        "2022-11-04 10:18:00.128309",
        "0001-01-01 00:00:00",
        "0001-12-31 23:59:59.9 BC",
        "2016-02-29 00:00:00.000010",
        "infinity",
        "-infinity",
    ],
    "day": ["2024-02-29", "0001-01-01", "0001-01-01 BC", "5874897-12-31", "4713-11-24 BC", "infinity", "-infinity"],
    "amount": [
        "0",
        "0.00",
        "-0.5",
        "1",
        "10000",
        "0.0001",
        "0.00000000000000000001",
        "123456789012345678901234567890.123456789",
        "-99999999.99990000",
        "1e-5",
        "NaN",
        "Infinity",
        "-Infinity",
        "100000000",
        "0.1000",
        "9" * 140 + "." + "0" * 60 + "1",  # more digits than the converter keeps on its stack
    ],
    "price": ["0.00", "-1234567890.12", "9999999999.99", "0.10"],
    "identifier": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"],
}

# pg_dump runs in the server's or PGTZ's zone; offsets with minutes and seconds must survive.
ZONES = ["UTC", "Asia/Kolkata", "America/St_Johns", "Africa/Monrovia", "Europe/Amsterdam"]


@pytest.fixture
def database(adapter: PostgresqlAdapter) -> Iterator[psycopg.Connection[tuple[object, ...]]]:  # noqa: F811
    url = adapter.create_scratch(SERVER_URL, None)
    name = ServerLocation.parse(url).database
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=name, autocommit=True) as connection:
        yield connection
    adapter.drop_database(url, None)


def _rows() -> list[list[str | None]]:
    """Each value of each column in a row of its own (the other columns NULL), then one row of
    every column's first value, and a row of NULLs."""
    names = list(COLUMNS)
    rows: list[list[str | None]] = []
    for column, values in VALUES.items():
        for value in values:
            row: list[str | None] = [None] * len(names)
            row[names.index(column)] = value
            rows.append(row)
    rows.append([VALUES[name][0] for name in names])
    rows.append([None] * len(names))
    return rows


def _text_of(connection: psycopg.Connection[tuple[object, ...]], table: str) -> list[tuple[object, ...]]:
    columns = ", ".join(f"{name}::text" for name in COLUMNS)
    return connection.execute(f"SELECT id, {columns} FROM {table} ORDER BY id").fetchall()


def _copy_text_out(connection: psycopg.Connection[tuple[object, ...]], statement: str) -> bytes:
    out = bytearray()
    with connection.cursor().copy(statement) as copy:
        for piece in copy:
            out += piece
    return bytes(out)


@pytest.mark.parametrize("zone", ZONES)
def test_binary_rows_load_exactly_what_the_text_loads(
    database: psycopg.Connection[tuple[object, ...]], zone: str
) -> None:
    connection = database
    definition = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    connection.execute(f"CREATE TABLE source (id int, {definition})")
    connection.execute(f"CREATE TABLE twin (id int, {definition})")
    placeholders = ", ".join(["%s"] * (len(COLUMNS) + 1))
    with connection.cursor() as cursor:
        for number, row in enumerate(_rows()):
            cursor.execute(f"INSERT INTO source VALUES ({placeholders})", [number, *row])
    # As pg_dump's session writes the rows (pg_dump.c, setup_connection).
    connection.execute("SET DateStyle = ISO")
    connection.execute("SET IntervalStyle = postgres")
    connection.execute("SET extra_float_digits = 3")
    connection.execute(f"SET TimeZone = '{zone}'")
    names = ", ".join(["id", *COLUMNS])
    text = _copy_text_out(connection, f"COPY public.source ({names}) TO STDOUT")

    statement = f"COPY public.twin ({names}) FROM stdin".encode()
    with connection.cursor() as cursor:
        planned = copy_binary.binary_statement(cursor, statement)
        assert planned is not None
        binary_statement, kinds = planned
        assert kinds == b"ihilttttjbTSdnnu"
        with cursor.copy(binary_statement) as copy:
            copy.write(copy_binary.HEADER)
            # In two pieces cut at a row's end, as the loader sends them.
            cut = text.index(b"\n", len(text) // 2) + 1
            copy.write(copy_binary.rows(text[:cut], kinds, statement)[0])
            copy.write(copy_binary.rows(text[cut:], kinds, statement)[0])
            copy.write(copy_binary.TRAILER)
        assert cursor.rowcount == len(_rows())

    connection.execute("SET TimeZone = 'UTC'")
    assert _text_of(connection, "twin") == _text_of(connection, "source")


def test_a_value_the_converter_cannot_read_names_the_row_and_column_not_the_value() -> None:
    statement = b'COPY "My Schema".events (id, at) FROM stdin'
    text = b"1\t2022-01-01 00:00:00+00\n2\tsecret-looking-value\n"
    with pytest.raises(SourceError) as raised:
        copy_binary.rows(text, b"lT", statement)
    message = str(raised.value)
    assert '"My Schema".events' in message and "row 2, column 2" in message and "timestamptz" in message
    assert "secret" not in message
    # A piece of a table whose earlier pieces held 40 rows, and one whose earlier rows were not counted.
    with pytest.raises(SourceError, match="row 42, column 2"):
        copy_binary.rows(text, b"lT", statement, lambda: 40)
    with pytest.raises(SourceError, match="row 2 of one piece of them, column 2"):
        copy_binary.rows(text, b"lT", statement, lambda: None)


def test_a_damaged_row_past_the_first_piece_is_numbered_within_its_table(
    adapter: PostgresqlAdapter,  # noqa: F811
) -> None:
    """The loader sends a table in 1 MiB pieces to two connections; the row number is the
    table's, not the piece's."""
    source, target = adapter.create_scratch(SERVER_URL, None), adapter.create_scratch(SERVER_URL, None)
    try:
        execute(
            source,
            "CREATE TABLE notes (id int, body text);"
            " INSERT INTO notes SELECT g, 'secret-' || md5(g::text) FROM generate_series(1, 80000) g;",
        )
        dump = dump_bytes(adapter, source)
        assert len(dump) > 3 * postgresql_loader.PIECE_BYTES
        damaged = dump.replace(b"\x0070000\tsecret-", b"\x007000x\tsecret-")  # a frame per row
        assert damaged.count(b"7000x") == 1
        with pytest.raises(SourceError) as raised:
            adapter.restore(target, None, io.BytesIO(damaged), create=False)
        message = str(raised.value)
        assert "public.notes" in message and "row 70000, column 1: " in message and "integer" in message
        assert "secret" not in message and "7000x" not in message
    finally:
        adapter.drop_database(target, None)
        adapter.drop_database(source, None)


@pytest.mark.parametrize(
    ("text", "kinds", "problem"),
    [
        (b"1\t2\n", b"i", "more columns"),
        (b"1\n", b"ii", "fewer columns"),
        (b"40000\n", b"h", "out of range"),
        (b"9223372036854775808\n", b"l", "out of range"),
        (b"12a\n", b"i", "not an integer"),
        (b"yes\n", b"b", "not a boolean"),
        (b"2022-13-01\n", b"d", "not a date"),
        (b"2022-01-01 00:00:00\n", b"T", "without its offset"),
        (b"1.\n", b"n", "not a numeric"),
        (b"1e5\n", b"n", "not a numeric"),
        (b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1\n", b"u", "not a uuid"),
        (b"ends with\\\tx\n", b"tt", "backslash"),
        (b"1\\.5\n", b"n", "escape"),
    ],
)
def test_text_pg_dump_does_not_write_is_refused(text: bytes, kinds: bytes, problem: str) -> None:
    with pytest.raises(SourceError, match=problem):
        copy_binary.rows(text, kinds, b"COPY public.t (a) FROM stdin")


def test_a_last_row_without_its_newline_and_no_rows_at_all() -> None:
    assert copy_binary.convert is not None
    assert copy_binary.convert(b"", b"i") == (b"", 0)
    assert copy_binary.convert(b"7", b"i") == (b"\x00\x01\x00\x00\x00\x04\x00\x00\x00\x07", 1)


@pytest.mark.parametrize(
    ("statement", "parts"),
    [
        (b"COPY public.events (id, at) FROM stdin", (b"public.events", b"id, at")),
        (
            b'COPY "Sales Dept"."Order lines" (id, "note text") FROM stdin',
            (b'"Sales Dept"."Order lines"', b'id, "note text"'),
        ),
        (b'COPY public."a.b" ("x, y", "q""uote") FROM stdin', (b'public."a.b"', b'"x, y", "q""uote"')),
        (b"COPY public.nothing  FROM stdin", None),
        (b"COPY public.t (id) TO stdout", None),
        (b'COPY public."unclosed (id) FROM stdin', None),
    ],
)
def test_the_table_and_columns_are_read_out_of_pg_dumps_copy_statement(
    statement: bytes, parts: tuple[bytes, bytes] | None
) -> None:
    assert copy_binary._copy_parts(statement) == parts


def test_a_table_with_a_type_the_converter_does_not_know_stays_text(
    database: psycopg.Connection[tuple[object, ...]],
) -> None:
    database.execute("CREATE TABLE mixed (id int, ratio float8)")
    database.execute("CREATE TABLE known (id int, note text)")
    with database.cursor() as cursor:
        assert copy_binary.binary_statement(cursor, b"COPY public.mixed (id, ratio) FROM stdin") is None
        assert copy_binary.binary_statement(cursor, b"COPY public.known (id, note) FROM stdin") is not None
        database.execute("SET client_encoding = 'SJIS'")
        assert copy_binary.binary_statement(cursor, b"COPY public.known (id, note) FROM stdin") is None


def test_a_domain_column_goes_as_its_base_type_and_keeps_its_check(
    database: psycopg.Connection[tuple[object, ...]],
) -> None:
    database.execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)")
    database.execute("CREATE TABLE counted (id positive, label text)")
    statement = b"COPY public.counted (id, label) FROM stdin"
    with database.cursor() as cursor:
        planned = copy_binary.binary_statement(cursor, statement)
        assert planned is not None and planned[1] == b"it"
        with cursor.copy(planned[0]) as copy:
            copy.write(copy_binary.HEADER + copy_binary.rows(b"1\tone\n2\t\\N\n", planned[1], statement)[0])
            copy.write(copy_binary.TRAILER)
        with pytest.raises(psycopg.errors.CheckViolation), cursor.copy(planned[0]) as copy:
            copy.write(copy_binary.HEADER + copy_binary.rows(b"-1\tnegative\n", planned[1], statement)[0])
            copy.write(copy_binary.TRAILER)
    assert database.execute("SELECT id, label FROM counted ORDER BY id").fetchall() == [(1, "one"), (2, None)]
