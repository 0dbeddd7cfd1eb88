"""The parallel loader for custom-format dumps (postgresql_loader.py), against the real server."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lockstep.databases import copy_binary, copy_frames, postgresql_indexes, postgresql_loader
from lockstep.databases.base import ServerLocation
from lockstep.databases.postgresql import PostgresqlAdapter
from lockstep.databases.postgresql_archive import OFFSET_SET, SECTION_POST_DATA, TocEntry, parse_head, read_head
from lockstep.databases.postgresql_indexes import index_jobs
from lockstep.databases.postgresql_loader import _RowSplitter, plan_load
from lockstep.errors import SourceError
from tests.conftest import missing
from tests.databases.test_postgresql import (
    BINARY,
    RICH_SCHEMA,
    SERVER_URL,
    TEXT,
    adapter,  # noqa: F401 - a fixture
    dump_bytes,
    execute,
    query,
)

INDEXES = (
    "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes WHERE schemaname NOT LIKE 'pg_%' ORDER BY 3"
)
CONSTRAINTS = (
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), conindid::regclass::text"
    " FROM pg_constraint WHERE connamespace::regnamespace::text NOT LIKE 'pg_%' ORDER BY 2"
)
# Values that COPY text escapes or that look like its end marker.
AWKWARD = ["line one\nline two", "tab\there", "back\\slash", "\\.", ".", "\\", "\r\n", "", " trailing "]


@pytest.fixture
def database(adapter: PostgresqlAdapter) -> Iterator[str]:  # noqa: F811
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


@pytest.fixture
def scratch(adapter: PostgresqlAdapter) -> Iterator[str]:  # noqa: F811
    url = adapter.create_scratch(SERVER_URL, None)
    yield url
    adapter.drop_database(url, None)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """Small pieces, so even these tables go to both connections; records what each load did."""
    monkeypatch.setattr(postgresql_loader, "PIECE_BYTES", 4096)
    seen: list[dict[str, int]] = []
    original = postgresql_loader.ParallelLoader.run

    def run(self: postgresql_loader.ParallelLoader, *arguments: Any) -> postgresql_loader.LoadResult:
        result = original(self, *arguments)
        seen.append(result.rows)
        return result

    monkeypatch.setattr(postgresql_loader.ParallelLoader, "run", run)
    return seen


def fill(url: str) -> None:
    execute(url, RICH_SCHEMA.replace("CREATE TABLE documents (id int PRIMARY KEY, body oid);", ""))
    execute(
        url,
        'CREATE SCHEMA "Sales Dept"; CREATE TABLE "Sales Dept"."Order lines" (id int PRIMARY KEY, "note text" text);'
        " CREATE TABLE empty_one (id int); CREATE MATERIALIZED VIEW customer_count AS SELECT count(*) FROM customers;"
        " COMMENT ON TABLE customers IS 'people'; CREATE INDEX ON customers (name);"
        ' INSERT INTO "Sales Dept"."Order lines" SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 3000) g;'
        " CREATE TABLE readings (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);"
        " CREATE TABLE readings_2024 PARTITION OF readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
        " CREATE INDEX ON readings (day);"
        " INSERT INTO readings SELECT g, date '2024-01-01' + g % 300 FROM generate_series(1, 900) g;",
    )
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=ServerLocation.parse(url).database) as connection:
        connection.execute("INSERT INTO customers (name, photo) VALUES (%s, %s)", (TEXT, BINARY))
        for number, value in enumerate(AWKWARD):
            connection.execute('INSERT INTO "Sales Dept"."Order lines" VALUES (%s, %s)', (-number, value))


def test_a_stream_restores_everything_through_the_parallel_loader(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    loads: list[dict[str, int]],
) -> None:
    fill(database)
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)

    assert loads == [
        {
            "audit": 1,
            "customers": 501,
            "events_without_key": 300,
            "readings_2024": 900,
            "Sales Dept.Order lines": 3000 + len(AWKWARD),
        }
    ]
    for catalog_query in (INDEXES, CONSTRAINTS):
        assert query(scratch, catalog_query) == query(database, catalog_query)
    source, restored = adapter.inspect(database, None), adapter.inspect(scratch, None)
    assert restored.tables == source.tables
    lines = query(scratch, 'SELECT "note text" FROM "Sales Dept"."Order lines" WHERE id <= 0 ORDER BY id DESC')
    assert [line for (line,) in lines] == AWKWARD
    assert query(scratch, "SELECT last_value, is_called FROM invoice_numbers") == [(4242, True)]
    assert query(scratch, "SELECT nextval('customers_id_seq')") == [(9002,)]
    assert query(scratch, "SELECT count(*), min(shout) FROM big_customers") == [(11, "CUSTOMER 491")]
    assert query(scratch, "SELECT * FROM customer_count") == [(501,)]
    assert query(scratch, "SELECT obj_description('customers'::regclass)") == [("people",)]
    assert query(scratch, "SELECT count(*) FROM pg_indexes WHERE tablename = 'customers'") == [(2,)]
    assert query(scratch, "SELECT name, photo FROM customers WHERE name = %s", TEXT) == [(TEXT, BINARY)]
    execute(scratch, "INSERT INTO customers (name) VALUES ('after restore')")
    assert query(scratch, "SELECT note FROM audit WHERE note LIKE '%after%'") == [("inserted after restore",)]


def test_each_tables_indexes_are_built_once_its_rows_are_in(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    loads: list[dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not all at the end: a table's indexes are queued when its COPY has committed on every
    connection, while later tables still load."""
    queued_early: list[str] = []
    original = postgresql_indexes.IndexBuilder.table_loaded

    def table_loaded(self: postgresql_indexes.IndexBuilder, schema: str, table: str) -> None:
        if (schema, table) in self._waiting:
            queued_early.append(f"{schema}.{table}")
        original(self, schema, table)

    monkeypatch.setattr(postgresql_indexes.IndexBuilder, "table_loaded", table_loaded)
    fill(database)
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)

    assert queued_early == ["public.customers"]  # the other tables' indexes stay with pg_restore:
    # "Sales Dept"."Order lines" (a name with spaces), readings (partitioned)
    assert query(scratch, INDEXES) == query(database, INDEXES)


def test_a_latin1_database_keeps_its_characters(
    adapter: PostgresqlAdapter,  # noqa: F811
    scratch: str,
    loads: list[dict[str, int]],
) -> None:
    name = "lockstep_verify_latin1_source"
    source = SERVER_URL.rsplit("/", 1)[0] + "/" + name
    adapter.drop_database(source, None)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        execute(
            source,
            "CREATE TABLE words (word text); INSERT INTO words VALUES ('Grüße'), ('façade'), ('½');"
            " CREATE INDEX not_greetings ON words (word) WHERE word <> 'Grüße';",
        )
        adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, source)), create=False)
        assert loads and loads[0] == {"words": 3}
        assert sorted(query(scratch, "SELECT word FROM words")) == [("Grüße",), ("façade",), ("½",)]
        assert query(scratch, "SELECT indexdef LIKE '%Grüße%' FROM pg_indexes WHERE indexname = 'not_greetings'") == [
            (True,)
        ]
    finally:
        adapter.drop_database(source, None)


def test_large_objects_take_the_plain_pg_restore_way(adapter: PostgresqlAdapter, database: str) -> None:  # noqa: F811
    execute(
        database, "CREATE TABLE documents (id int, body oid); INSERT INTO documents VALUES (1, lo_from_bytea(0, 'x'))"
    )
    head = parse_head(dump_bytes(adapter, database))
    assert head is not None
    assert plan_load(head) is None


def test_the_head_is_read_in_growing_pieces(adapter: PostgresqlAdapter, database: str) -> None:  # noqa: F811
    fill(database)
    data = dump_bytes(adapter, database)
    head, first_bytes = read_head(io.BytesIO(data).read, first_read=7)
    assert head is not None and data.startswith(first_bytes) and len(first_bytes) >= head.end
    assert {entry.description for entry in head.entries} >= {"TABLE", "TABLE DATA", "SEQUENCE SET", "INDEX"}
    assert read_head(io.BytesIO(b"not a dump at all").read) == (None, b"not a dump at all")


def test_a_dump_cut_short_fails_and_says_so(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
) -> None:
    fill(database)
    data = dump_bytes(adapter, database)
    with pytest.raises(SourceError, match="ends inside") as raised:
        adapter.restore(scratch, None, io.BytesIO(data[: len(data) * 2 // 3]), create=False)
    assert raised.value.hint is not None and "partly restored" in raised.value.hint


class _Recorder:
    """Stands in for a COPY connection."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.backlog = 0

    def execute(self, statement: bytes) -> None:
        self.events.append(("sql", statement))

    def begin(self, statement: bytes) -> None:
        self.events.append(("begin", statement))

    def rows_piece(self, data: bytes, piece: object) -> None:
        self.events.append(("data", data))
        self.backlog += 1

    def end(self) -> None:
        self.events.append(("end", b""))


@pytest.mark.parametrize("piece_size", [1, 2, 3, 5, 64, 10_000])
def test_copy_text_is_cut_at_line_ends_whatever_the_pieces(monkeypatch: pytest.MonkeyPatch, piece_size: int) -> None:
    monkeypatch.setattr(postgresql_loader, "PIECE_BYTES", 16)
    rows = [b"1\tfirst\n", b"2\ta \\\\. b\n", b"3\t\\\\.\n", b"4\tlast line that is longer than a piece\n"]
    text = b"".join(rows) + b"\\.\n\n\n"  # pg_dump's end of a table's data, which COPY must not get
    workers = [_Recorder(), _Recorder()]
    splitter = _RowSplitter(workers)  # type: ignore[arg-type]
    splitter.begin(b"COPY public.a (id, v) FROM stdin")
    for start in range(0, len(text), piece_size):
        splitter.add(text[start : start + piece_size])
    splitter.end()
    splitter.begin(b"COPY public.b (id) FROM stdin")
    splitter.add(b"\\.\n\n\n")
    splitter.end()

    for worker in workers:
        kinds = [kind for kind, _ in worker.events if kind != "data"]
        assert kinds == ["begin", "end", "begin", "end"]
    pieces = [data for worker in workers for kind, data in worker.events if kind == "data"]
    assert all(piece.endswith(b"\n") for piece in pieces)
    assert sorted(b"".join(pieces).splitlines(keepends=True)) == sorted(rows)


def test_a_last_row_without_its_newline_is_still_sent() -> None:
    worker = _Recorder()
    splitter = _RowSplitter([worker])  # type: ignore[list-item]
    splitter.begin(b"COPY public.a (id) FROM stdin")
    splitter.add(b"1\n2")
    splitter.end()
    assert b"".join(data for kind, data in worker.events if kind == "data") == b"1\n2"


def test_a_dump_restores_with_frames_stripped_in_python_too(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    loads: list[dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Installs without a C compiler have no _copy_frames module."""
    monkeypatch.setattr(copy_frames, "unframe", copy_frames.unframe_in_python)
    fill(database)
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    assert loads and loads[0]["Sales Dept.Order lines"] == 3000 + len(AWKWARD)
    assert adapter.inspect(scratch, None).tables == adapter.inspect(database, None).tables


def test_tables_of_known_types_load_as_binary_rows_and_the_rest_as_text(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    loads: list[dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    converted: list[bytes] = []
    rows = copy_binary.rows

    def counting_rows(text: bytes, kinds: bytes, statement: bytes, *before: Any) -> tuple[bytes, int]:
        converted.append(statement)
        return rows(text, kinds, statement, *before)

    monkeypatch.setattr(copy_binary, "rows", counting_rows)
    fill(database)
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    assert adapter.inspect(scratch, None).tables == adapter.inspect(database, None).tables
    assert b'COPY "Sales Dept"."Order lines" (id, "note text") FROM stdin' in converted
    assert not any(b"customers" in statement for statement in converted)  # bytea: not a known type


def test_a_dump_restores_as_text_without_the_binary_converter(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    loads: list[dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Installs without a C compiler have no _copy_binary module."""
    if copy_binary.convert is None:
        missing("the _copy_binary extension is not built (a C compiler at install time)")
    monkeypatch.setattr(copy_binary, "convert", None)
    monkeypatch.setattr(copy_binary, "rows", None)  # never called
    fill(database)
    adapter.restore(scratch, None, io.BytesIO(dump_bytes(adapter, database)), create=False)
    assert loads and loads[0]["Sales Dept.Order lines"] == 3000 + len(AWKWARD)
    assert adapter.inspect(scratch, None).tables == adapter.inspect(database, None).tables


def _entry(description: str, definition: str, tablespace: str = "") -> TocEntry:
    return TocEntry(1, False, "t", description, SECTION_POST_DATA, definition, "", "public", tablespace, 0, OFFSET_SET)


def test_only_simple_indexes_and_keys_are_built_by_lockstep() -> None:
    simple = [
        _entry("INDEX", "CREATE INDEX t_a_idx ON public.t USING btree (a, b);\n"),
        _entry("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n"),
        _entry("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_key UNIQUE (a, b);\n"),
    ]
    left_to_pg_restore = [
        _entry("INDEX", "CREATE INDEX t_a_idx ON public.t USING btree (a);\n", tablespace="fast"),
        _entry("INDEX", "CREATE INDEX t_a_idx ON ONLY public.t USING btree (a);\n"),
        _entry("INDEX", "CREATE INDEX i ON public.t USING btree (a);\n\nALTER TABLE public.t CLUSTER ON i;\n"),
        _entry("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id) DEFERRABLE;\n"),
        _entry("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT k UNIQUE NULLS NOT DISTINCT (a);\n"),
        _entry("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT k PRIMARY KEY (id) INCLUDE (a);\n"),
        _entry("CONSTRAINT", "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT c CHECK ((a > 0));\n"),
        _entry(
            "FK CONSTRAINT",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES public.u(id);\n",
        ),
    ]
    jobs = index_jobs(simple + left_to_pg_restore)
    assert [job.build for job in jobs] == [
        "CREATE INDEX t_a_idx ON public.t USING btree (a, b);\n",
        "CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)",
        "CREATE UNIQUE INDEX t_key ON public.t USING btree (a, b)",
    ]
    assert [job.attach for job in jobs] == [
        None,
        "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_pkey",
        "ALTER TABLE ONLY public.t ADD CONSTRAINT t_key UNIQUE USING INDEX t_key",
    ]


class _WatchedStream(io.BytesIO):
    """A dump stream that, at each read, notes how many bytes the files under `folder` hold."""

    def __init__(self, data: bytes, folder: Path) -> None:
        super().__init__(data)
        self.folder = folder
        self.most = 0

    def read(self, size: int | None = -1) -> bytes:
        held = sum(path.stat().st_size for path in self.folder.rglob("*") if path.is_file())
        self.most = max(self.most, held)
        return super().read(size)


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the restore's temporary files go to."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


SMALL_AND_BIG = (
    "CREATE TABLE products (sku text PRIMARY KEY, price numeric CHECK (price > 0));"
    " CREATE INDEX products_price ON products (price);"
    " CREATE TABLE events (id bigserial PRIMARY KEY, product text REFERENCES products, body text);"
    " INSERT INTO products SELECT 'sku-' || g, g FROM generate_series(1, 25) g;"
    " INSERT INTO events (product, body) SELECT 'sku-' || (1 + g % 25), repeat(md5(g::text), 4)"
    " FROM generate_series(1, 60000) g;"
)


def test_one_small_table_of_a_stream_is_restored_without_a_copy_of_the_dump(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    loads: list[dict[str, int]],
    temporary: Path,
) -> None:
    """--table products of a dump whose other table holds ~8 MB: the parallel loader loads
    products alone (the events rows are read past) and the temporary folder never holds more
    than the table of contents; the restored table is the source's, with its index and check."""
    execute(database, SMALL_AND_BIG)
    data = dump_bytes(adapter, database)
    assert len(data) > 8_000_000
    stream = _WatchedStream(data, temporary)

    restored = adapter.restore_tables(scratch, None, stream, False, ["products"])

    assert stream.most < 100_000, f"{stream.most} bytes written to the temporary folder"
    assert stream.tell() == len(data)  # read to its end
    assert loads == [{"products": 25}]
    assert restored.left_out == []
    assert query(
        scratch, "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
    ) == [("products",)]
    assert query(scratch, "SELECT * FROM products ORDER BY 1") == query(database, "SELECT * FROM products ORDER BY 1")
    assert query(scratch, INDEXES) == query(
        database, INDEXES.replace("ORDER BY", "AND tablename = 'products' ORDER BY")
    )
    table_constraints = [row for row in query(scratch, CONSTRAINTS) if row[0] != "-"]
    assert table_constraints == [
        ("products", "products_pkey", "PRIMARY KEY (sku)", "products_pkey"),
        ("products", "products_price_check", "CHECK ((price > (0)::numeric))", "-"),
    ]


def test_the_big_table_of_a_stream_comes_back_with_its_sequence_and_the_foreign_key_named(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    temporary: Path,
) -> None:
    """--table events: its rows, primary key and sequence value; its foreign key to products
    (not restored) left out and named; still no copy of the dump."""
    execute(database, SMALL_AND_BIG)
    data = dump_bytes(adapter, database)
    stream = _WatchedStream(data, temporary)

    restored = adapter.restore_tables(scratch, None, stream, False, ["events"])

    assert stream.most < 100_000
    assert restored.left_out == ["foreign key events_product_fkey of events (references products, not restored)"]
    assert adapter.inspect(scratch, None).tables == [
        table for table in adapter.inspect(database, None).tables if table.name == "events"
    ]
    assert query(scratch, "SELECT nextval('events_id_seq')") == [(60001,)]


def test_tables_of_a_dump_with_large_objects_still_go_through_a_file(
    adapter: PostgresqlAdapter,  # noqa: F811
    database: str,
    scratch: str,
    temporary: Path,
) -> None:
    """A dump the loader cannot plan (large objects) is written to a file for pg_restore, as
    before, and the table comes back."""
    execute(database, SMALL_AND_BIG + " CREATE TABLE documents (id int, body oid);")
    execute(database, "INSERT INTO documents VALUES (1, lo_from_bytea(0, 'x'))")
    data = dump_bytes(adapter, database)
    stream = _WatchedStream(data, temporary)

    adapter.restore_tables(scratch, None, stream, False, ["products"])

    assert stream.most > len(data) // 2
    assert query(scratch, "SELECT count(*) FROM products") == [(25,)]
    assert list(temporary.iterdir()) == []
