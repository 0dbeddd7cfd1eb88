"""`lockstep snapshot restore ID --database NAME --table T --to URL`: some tables of a snapshot
into a new database, checked against the manifest, with the real CLI in a child process and the
real PostgreSQL server on 127.0.0.1:5432, the real MariaDB on 127.0.0.1:3306 (databases named
mytables_...) and real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_snapshot_cli import Project, sqlite_fingerprint
from tests.cli.test_snapshot_verify_cli import make_project
from tests.pipeline.test_verify import (
    MARIADB_SERVER,
    require_mariadb,
    require_postgresql,
    run_mariadb,
    run_postgresql,
)

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SHOP = """
CREATE SCHEMA archive;
CREATE TYPE tier AS ENUM ('gold', 'silver');
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL UNIQUE, tier tier DEFAULT 'silver', CHECK (length(name) > 0)
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric NOT NULL CHECK (total > 0),
    note text
);
CREATE INDEX orders_note ON orders (note);
COMMENT ON TABLE orders IS 'what was sold';
CREATE TABLE products (sku text PRIMARY KEY, price numeric);
CREATE TABLE archive.old_orders (id int PRIMARY KEY, total numeric);
INSERT INTO customers (name, tier) SELECT 'customer ' || g, 'gold' FROM generate_series(1, 40) g;
INSERT INTO orders (customer_id, total, note) SELECT 1 + g % 40, g, 'order ' || g FROM generate_series(1, 300) g;
INSERT INTO products SELECT 'sku-' || g, g FROM generate_series(1, 25) g;
INSERT INTO archive.old_orders SELECT g, g * 2 FROM generate_series(1, 10) g;
"""


def tables_name() -> str:
    return f"tables_{uuid.uuid4().hex[:10]}"


def drop(name: str) -> None:
    run_postgresql(SERVER, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")


@contextmanager
def shop_database() -> Iterator[str]:
    require_postgresql()
    name = tables_name()
    run_postgresql(SERVER, f'CREATE DATABASE "{name}"', database="postgres")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        run_postgresql(url, SHOP)
        yield url
    finally:
        drop(name)


@contextmanager
def target_database() -> Iterator[str]:
    """The URL of a database that does not exist yet, dropped afterwards."""
    name = tables_name()
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        drop(name)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Project, str]]:
    """A project whose database `shop` is the PostgreSQL database above, with one snapshot."""
    project = make_project(tmp_path)
    with shop_database() as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "shop")
        yield project, url


def relations(url: str) -> set[str]:
    rows = run_postgresql(
        url,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    return {str(row[0]) for row in rows}


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    return run_postgresql(url, f"SELECT * FROM {table} ORDER BY 1")


def constraints(url: str, table: str) -> dict[str, str]:
    found = run_postgresql(url, f"SELECT conname, contype FROM pg_constraint WHERE conrelid = '{table}'::regclass")
    return {str(name): str(kind) for name, kind in found}


def test_one_table_comes_back_alone_with_its_indexes_and_constraints_and_the_foreign_key_is_named(
    shop: tuple[Project, str],
) -> None:
    """--table orders: only public.orders in the new database, its rows the snapshot's, its
    primary key, check, identity sequence, index and comment restored; its foreign key to
    customers (not restored) left out and named in the output and in --json."""
    project, url = shop
    with target_database() as target:
        result = project.ok(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "orders", "--to", target, "--json"
        )
        document = json.loads(result.out)["databases"][0]
        assert document["only_tables"] == ["orders"] and document["tables"] == 1 and document["rows"] == 300
        assert document["left_out"] == [
            "foreign key orders_customer_id_fkey of orders (references customers, not restored)"
        ]
        assert relations(target) == {"public.orders"}
        assert rows(target, "orders") == rows(url, "orders")
        assert constraints(target, "orders") == {"orders_pkey": "p", "orders_total_check": "c"}
        assert run_postgresql(target, "SELECT indexname FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1") == [
            ("orders_note",),
            ("orders_pkey",),
        ]
        assert run_postgresql(target, "SELECT obj_description('orders'::regclass)") == [("what was sold",)]
        # The identity sequence carries on from the snapshot's value.
        run_postgresql(target, "INSERT INTO orders (customer_id, total) VALUES (1, 1)")
        assert run_postgresql(target, "SELECT max(id) FROM orders") == [(301,)]


def test_two_tables_come_back_with_the_foreign_key_between_them(shop: tuple[Project, str]) -> None:
    """--table orders --table public.customers: both tables, their rows, the foreign key kept
    (both ends restored), the serial column's default and sequence, the enum type customers
    needs; nothing left out; the text output names the tables."""
    project, url = shop
    with target_database() as target:
        result = project.ok(
            "snapshot",
            "restore",
            "latest",
            "--database",
            "shop",
            "--table",
            "orders",
            "--table",
            "public.customers",
            "--to",
            target,
        )
        assert "2 tables of database shop (orders, customers) restored" in result.out
        assert "left out" not in result.out
        assert relations(target) == {"public.orders", "public.customers"}
        assert rows(target, "customers") == rows(url, "customers")
        assert rows(target, "orders") == rows(url, "orders")
        assert constraints(target, "orders")["orders_customer_id_fkey"] == "f"
        assert set(constraints(target, "customers")) == {"customers_pkey", "customers_name_key", "customers_name_check"}
        assert run_postgresql(target, "INSERT INTO customers (name) VALUES ('new') RETURNING id") == [(41,)]


def test_a_table_of_another_schema_comes_back_with_its_schema(shop: tuple[Project, str]) -> None:
    """--table archive.old_orders: the schema archive is created and holds the table's rows,
    and nothing else is restored."""
    project, url = shop
    with target_database() as target:
        project.ok(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "archive.old_orders", "--to", target
        )
        assert relations(target) == {"archive.old_orders"}
        assert rows(target, "archive.old_orders") == rows(url, "archive.old_orders")


def test_a_table_the_snapshot_lacks_is_exit_13_naming_its_tables(shop: tuple[Project, str]) -> None:
    project, _ = shop
    with target_database() as target:
        failed = project.lockstep(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "order", "--to", target
        )
        assert failed.returncode == 13, failed.err
        assert "no table 'order'" in failed.err
        assert "customers" in failed.err and "archive.old_orders" in failed.err
        assert run_postgresql(SERVER, f"SELECT 1 FROM pg_database WHERE datname = {_literal(target)}") == []


def test_table_without_to_or_into_a_live_or_non_empty_database_is_refused(shop: tuple[Project, str]) -> None:
    """--table without --to: exit 2, saying to use --to; --to the project's own database (in
    place): exit 2; --to a database that holds tables: exit 2, nothing changed."""
    project, url = shop
    without_to = project.lockstep("snapshot", "restore", "latest", "--database", "shop", "--table", "orders", "--yes")
    assert without_to.returncode == 2 and "--to" in without_to.err
    in_place = project.lockstep(
        "snapshot", "restore", "latest", "--database", "shop", "--table", "orders", "--to", url, "--yes"
    )
    assert in_place.returncode == 2 and "live" in in_place.err
    assert rows(url, "products")[:1] == [("sku-1", 1)]
    with target_database() as target:
        run_postgresql(SERVER, f'CREATE DATABASE "{_name(target)}"', database="postgres")
        run_postgresql(target, "CREATE TABLE keep (id int); INSERT INTO keep VALUES (7)")
        non_empty = project.lockstep(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "orders", "--to", target, "--yes"
        )
        assert non_empty.returncode == 2 and "not empty" in non_empty.err
        assert relations(target) == {"public.keep"}


def test_a_bare_name_in_two_schemas_lists_the_candidates_and_a_bare_unique_one_is_found(tmp_path: Path) -> None:
    """`items` in public and in sales: --table items is refused (exit 2) naming both; the bare
    `notes`, only in sales, is sales.notes."""
    project = make_project(tmp_path)
    require_postgresql()
    name = tables_name()
    run_postgresql(SERVER, f'CREATE DATABASE "{name}"', database="postgres")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        run_postgresql(
            url,
            "CREATE SCHEMA sales; CREATE TABLE items (id int); CREATE TABLE sales.items (id int);"
            "CREATE TABLE sales.notes (id int); INSERT INTO sales.notes VALUES (1), (2);",
        )
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "shop")
        with target_database() as target:
            failed = project.lockstep(
                "snapshot", "restore", "latest", "--database", "shop", "--table", "items", "--to", target
            )
            assert failed.returncode == 2, failed.err
            assert "public.items" in failed.err and "sales.items" in failed.err
            project.ok("snapshot", "restore", "latest", "--database", "shop", "--table", "notes", "--to", target)
            assert relations(target) == {"sales.notes"} and rows(target, "sales.notes") == [(1,), (2,)]
    finally:
        drop(name)


def test_sqlite_tables_are_copied_into_a_new_file(tmp_path: Path) -> None:
    """SQLite: --table orders --to a new file: only orders, with its rows and indexes; a table
    the snapshot lacks is exit 13."""
    project = make_project(tmp_path)
    with closing(sqlite3.connect(project.root / "app.db")) as connection:
        connection.executescript(
            "CREATE TABLE lines (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders (id),"
            " product TEXT NOT NULL CHECK (product <> ''), UNIQUE (order_id, product));"
            "CREATE INDEX lines_product ON lines (product);"
            "INSERT INTO lines (order_id, product) SELECT id, 'thing' FROM orders;"
        )
        connection.commit()
    created = project.create("--allow-dirty", "-m", "lines")
    recorded = {table["name"]: (table["rows"], table["checksum"]) for table in created["databases"]["main"]["tables"]}
    target = tmp_path / "copy.db"
    result = project.ok(
        "snapshot", "restore", "latest", "--database", "main", "--table", "lines", "--to", f"sqlite:///{target}"
    )
    assert "left out: foreign key" in result.out and "orders" in result.out
    assert sqlite_fingerprint(target) == {"lines": recorded["lines"]}
    with closing(sqlite3.connect(target)) as connection:
        indexes = {str(row[0]) for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "lines_product" in indexes and any(name.startswith("sqlite_autoindex_lines") for name in indexes)
        assert connection.execute("PRAGMA foreign_key_list(lines)").fetchall() == []
        schema = str(connection.execute("SELECT sql FROM sqlite_master WHERE name = 'lines'").fetchone()[0])
        assert "CHECK (product <> '')" in schema and "NOT NULL" in schema
    both = tmp_path / "both.db"
    project.ok(
        "snapshot", "restore", "latest", "--database", "main", "--table", "lines", "--table", "orders",
        "--to", f"sqlite:///{both}",
    )  # fmt: skip
    assert sqlite_fingerprint(both) == {"lines": recorded["lines"], "orders": recorded["orders"]}
    with closing(sqlite3.connect(both)) as connection:
        assert len(connection.execute("PRAGMA foreign_key_list(lines)").fetchall()) == 1
    missing = project.lockstep(
        "snapshot",
        "restore",
        "latest",
        "--database",
        "main",
        "--table",
        "nope",
        "--to",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    assert missing.returncode == 13 and "orders" in missing.err
    assert not (tmp_path / "x.db").exists()


def test_sqlite_rowids_triggers_and_indexes_come_back_and_views_do_not(tmp_path: Path) -> None:
    """SQLite: a table without INTEGER PRIMARY KEY keeps its rowids (1, 2, 5, 9 after deletes,
    not renumbered 1-4), so its FTS5 external-content index still matches it; its indexes
    (partial and expression ones too) and triggers come back; a trigger that writes to a table
    not restored is left out and named; a view is not restored."""
    project = make_project(tmp_path)
    with closing(sqlite3.connect(project.root / "app.db")) as connection:
        connection.executescript(
            "CREATE TABLE notes (body TEXT NOT NULL, stamp TEXT);"
            "INSERT INTO notes (body) VALUES ('one'), ('two'), ('three'), ('four'), ('five'), ('six'), ('seven'),"
            " ('eight'), ('nine');"
            "DELETE FROM notes WHERE rowid IN (3, 4, 6, 7, 8);"
            "CREATE VIRTUAL TABLE notes_search USING fts5 (body, content = 'notes');"
            "INSERT INTO notes_search (notes_search) VALUES ('rebuild');"
            "CREATE INDEX notes_body ON notes (body) WHERE body <> '';"
            "CREATE INDEX notes_lower ON notes (lower(body));"
            "CREATE TABLE audit (note INTEGER);"
            "CREATE TRIGGER notes_stamp AFTER INSERT ON NOTES BEGIN"
            " UPDATE notes SET stamp = 'new' WHERE rowid = new.rowid; END;"
            "CREATE TRIGGER notes_audit AFTER DELETE ON notes BEGIN INSERT INTO audit VALUES (old.rowid); END;"
            "CREATE VIEW short_notes AS SELECT * FROM notes WHERE length(body) < 4;"
        )
        connection.commit()
    project.create("--allow-dirty", "-m", "notes")
    target = tmp_path / "notes.db"
    result = project.ok(
        "snapshot", "restore", "latest", "--database", "main", "--table", "notes", "--table", "notes_search",
        "--to", f"sqlite:///{target}", "--json",
    )  # fmt: skip
    document = json.loads(result.out)["databases"][0]
    assert document["left_out"] == ["trigger notes_audit of notes (not restored: no such table: main.audit)"]
    with closing(sqlite3.connect(target)) as connection:
        assert connection.execute("SELECT rowid, body FROM notes ORDER BY rowid").fetchall() == [
            (1, "one"), (2, "two"), (5, "five"), (9, "nine")
        ]  # fmt: skip
        # The external-content index finds the rows by their rowids.
        assert connection.execute(
            "SELECT rowid, body FROM notes_search WHERE notes_search MATCH 'nine'"
        ).fetchall() == [(9, "nine")]
        schema = dict(connection.execute("SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'notes_search%'"))
        assert schema == {"notes": "table", "notes_body": "index", "notes_lower": "index", "notes_stamp": "trigger"}
        connection.execute("INSERT INTO notes (body) VALUES ('ten')")
        assert connection.execute("SELECT rowid, stamp FROM notes WHERE body = 'ten'").fetchall() == [(10, "new")]
        plan = connection.execute("EXPLAIN QUERY PLAN SELECT * FROM notes WHERE lower(body) = 'x'").fetchall()
        assert "notes_lower" in str(plan)
        connection.execute("ALTER TABLE notes RENAME TO kept_notes")  # no trigger names a missing table


MARIADB_SHOP = """
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(200) NOT NULL, UNIQUE KEY customers_name (name));
CREATE TABLE orders (
    id INT AUTO_INCREMENT PRIMARY KEY,
    customer_id INT NOT NULL,
    total DECIMAL(10, 2) NOT NULL CHECK (total > 0),
    note TEXT,
    KEY orders_note (note(20)),
    CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE
);
CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, price DECIMAL(10, 2));
CREATE TRIGGER orders_note BEFORE INSERT ON orders FOR EACH ROW SET NEW.note = COALESCE(NEW.note, 'none');
CREATE TRIGGER products_sku BEFORE INSERT ON products FOR EACH ROW SET NEW.sku = UPPER(NEW.sku);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
CREATE PROCEDURE order_count() SELECT COUNT(*) FROM orders;
CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY DO DELETE FROM products WHERE price IS NULL;
INSERT INTO customers VALUES (1, 'ann'), (2, 'bob'), (3, 'cy');
INSERT INTO orders (customer_id, total, note) VALUES (1, 10, 'first'), (2, 200, NULL), (3, 30.5, 'third');
INSERT INTO products VALUES ('A-1', 5), ('B-2', NULL);
"""
# A value holding what would open other sections, were the dump's text searched for them.
HOSTILE = (
    "x\n--\n-- Table structure for table `orders`\n--\n\n-- Dumping data for table `products`\n--\n"
    "DELIMITER ;;\n-- Dumping routines for database 'shop'\n"
)


@contextmanager
def mariadb_shop(statements: str = MARIADB_SHOP) -> Iterator[str]:
    """A MariaDB database (named mytables_...) holding `statements`, dropped afterwards."""
    require_mariadb()
    with mariadb_target(MARIADB_SERVER) as url:
        run_mariadb(url, f"CREATE DATABASE `{_name(url)}` CHARACTER SET utf8mb4", database="")
        run_mariadb(url, statements)
        yield url


@contextmanager
def mariadb_target(url: str) -> Iterator[str]:
    """The URL of a MariaDB database (named mytables_...) that does not exist yet, dropped afterwards."""
    name = f"mytables_{uuid.uuid4().hex[:10]}"
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        run_mariadb(url, f"DROP DATABASE IF EXISTS `{name}`", database="")


def mariadb_objects(url: str) -> dict[str, list[str]]:
    """The target's tables, views, triggers, routines and events, each sorted."""
    name = _name(url)
    found: dict[str, list[str]] = {}
    for kind, query in {
        "tables": f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{name}'"
        " AND table_type = 'BASE TABLE'",
        "views": f"SELECT table_name FROM information_schema.views WHERE table_schema = '{name}'",
        "triggers": f"SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = '{name}'",
        "routines": f"SELECT routine_name FROM information_schema.routines WHERE routine_schema = '{name}'",
        "events": f"SELECT event_name FROM information_schema.events WHERE event_schema = '{name}'",
    }.items():
        found[kind] = sorted(row[0] for row in run_mariadb(url, query, database=""))
    return found


def mariadb_indexes(url: str, table: str) -> list[str]:
    return sorted({row[2] for row in run_mariadb(url, f"SHOW INDEX FROM `{table}`")})


def mariadb_rows(url: str, table: str) -> list[list[str]]:
    return run_mariadb(url, f"SELECT * FROM `{table}` ORDER BY 1")


@pytest.fixture
def mariadb_shop_project(tmp_path: Path) -> Iterator[tuple[Project, str]]:
    project = make_project(tmp_path)
    with mariadb_shop() as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "mariadb shop")
        yield project, url


def test_mariadb_one_table_comes_back_alone_with_its_indexes_and_trigger_and_the_foreign_key_is_named(
    mariadb_shop_project: tuple[Project, str],
) -> None:
    """--table orders: only orders in the new database, its rows the snapshot's, its indexes,
    CHECK and trigger restored, its AUTO_INCREMENT carried on; its foreign key to customers (not
    restored) cut out and named; no other table, view, routine or event."""
    project, url = mariadb_shop_project
    with mariadb_target(url) as target:
        result = project.ok(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "orders", "--to", target, "--json"
        )
        document = json.loads(result.out)["databases"][0]
        assert document["only_tables"] == ["orders"] and document["tables"] == 1 and document["rows"] == 3
        assert document["left_out"] == ["foreign key orders_customer of orders (references customers, not restored)"]
        assert mariadb_objects(target) == {
            "tables": ["orders"], "views": [], "triggers": ["orders_note"], "routines": [], "events": []
        }  # fmt: skip
        assert mariadb_rows(target, "orders") == mariadb_rows(url, "orders")
        assert mariadb_indexes(target, "orders") == ["PRIMARY", "orders_customer", "orders_note"]
        assert run_mariadb(
            target,
            "SELECT COUNT(*) FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE()",
        ) == [["0"]]
        run_mariadb(target, "INSERT INTO orders (customer_id, total) VALUES (99, 1)")  # no key to customers now
        assert run_mariadb(target, "SELECT id, note FROM orders WHERE customer_id = 99") == [["4", "none"]]
        refused = subprocess.run(
            ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", _name(target)],
            input=b"INSERT INTO orders (customer_id, total) VALUES (1, -1)",
            capture_output=True,
            env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert refused.returncode != 0 and b"CONSTRAINT" in refused.stderr  # the CHECK came back


def test_mariadb_the_tables_own_auto_increment_and_all_its_triggers_come_back(tmp_path: Path) -> None:
    """orders' AUTO_INCREMENT is 50 after its last rows were deleted: the restored table goes on
    from 50, not from max(id) + 1; both of its triggers come back in their order (FOLLOWS), also
    from a schema-only snapshot (where mariadb-dump writes them right after the CREATE TABLE);
    products' trigger does not."""
    project = make_project(tmp_path)
    statements = MARIADB_SHOP + (
        "DELETE FROM orders WHERE id = 3; ALTER TABLE orders AUTO_INCREMENT = 50;"
        "CREATE TRIGGER orders_total BEFORE INSERT ON orders FOR EACH ROW FOLLOWS orders_note"
        " SET NEW.note = CONCAT(NEW.note, ' #', NEW.total);"
    )
    with mariadb_shop(statements) as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "full")
        project.create("--allow-dirty", "--schema-only", "-m", "schema only")
        full, schema_only = project.snapshot_ids()[-2:]
        for snapshot in (full, schema_only):
            with mariadb_target(url) as target:
                project.ok("snapshot", "restore", snapshot, "--database", "shop", "--table", "orders", "--to", target)
                assert mariadb_objects(target)["triggers"] == ["orders_note", "orders_total"]
                assert run_mariadb(
                    target,
                    "SELECT auto_increment FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name = 'orders'",
                ) == [["50"]]
                run_mariadb(target, "INSERT INTO orders (customer_id, total) VALUES (1, 7)")
                assert run_mariadb(target, "SELECT id, note FROM orders WHERE total = 7") == [["50", "none #7.00"]]


def test_mariadb_two_tables_come_back_with_the_foreign_key_between_them(
    mariadb_shop_project: tuple[Project, str],
) -> None:
    """--table orders --table customers: both, their rows, the foreign key kept; nothing left out."""
    project, url = mariadb_shop_project
    with mariadb_target(url) as target:
        result = project.ok(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "orders", "--table", "customers",
            "--to", target,
        )  # fmt: skip
        assert "2 tables of database shop (orders, customers) restored" in result.out
        assert "left out" not in result.out
        objects = mariadb_objects(target)
        assert objects["tables"] == ["customers", "orders"] and objects["triggers"] == ["orders_note"]
        assert mariadb_rows(target, "customers") == mariadb_rows(url, "customers")
        assert mariadb_rows(target, "orders") == mariadb_rows(url, "orders")
        assert mariadb_indexes(target, "customers") == ["PRIMARY", "customers_name"]
        assert run_mariadb(
            target,
            "SELECT constraint_name, referenced_table_name FROM information_schema.referential_constraints"
            " WHERE constraint_schema = DATABASE()",
        ) == [["orders_customer", "customers"]]


def test_mariadb_a_table_the_snapshot_lacks_is_exit_13(mariadb_shop_project: tuple[Project, str]) -> None:
    project, url = mariadb_shop_project
    with mariadb_target(url) as target:
        failed = project.lockstep(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "order", "--to", target
        )
        assert failed.returncode == 13, failed.err
        assert "no table 'order'" in failed.err and "customers" in failed.err
        assert run_mariadb(url, f"SHOW DATABASES LIKE '{_name(target)}'", database="") == []


def test_mariadb_values_that_look_like_the_dumps_section_comments_do_not_cut_it(tmp_path: Path) -> None:
    """Rows holding newline + "-- Table structure for table `orders`", "-- Dumping data for
    table", "DELIMITER ;;": mariadb-dump writes each row on one line (newlines as \\n), so only
    the real comments open sections, and each table comes back alone with exactly its rows."""
    project = make_project(tmp_path)
    hostile = HOSTILE.replace("\\", "\\\\").replace("'", "''")
    with mariadb_shop(MARIADB_SHOP + f"INSERT INTO customers VALUES (4, '{hostile}');") as url:
        assert run_mariadb(
            url, "SELECT LOCATE(CONCAT(CHAR(10), '-- Dumping'), name) > 0 FROM customers WHERE id = 4"
        ) == [["1"]]
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "hostile")
        dump = subprocess.run(
            ["mariadb-dump", "--host=127.0.0.1", "--port=3306", "--user=root", "--skip-dump-date", _name(url)],
            capture_output=True,
            env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout.decode()
        # The claim the cut relies on: the value's newlines are escaped, never a line start.
        assert dump.splitlines().count("-- Table structure for table `orders`") == 1
        assert dump.splitlines().count("-- Dumping data for table `products`") == 1
        assert "DELIMITER ;;\\n-- Dumping routines" in dump
        with mariadb_target(url) as target:
            project.ok("snapshot", "restore", "latest", "--database", "shop", "--table", "customers", "--to", target)
            assert mariadb_objects(target)["tables"] == ["customers"]
            assert mariadb_rows(target, "customers") == mariadb_rows(url, "customers")
            assert run_mariadb(target, "SELECT name FROM customers WHERE id = 4") == run_mariadb(
                url, "SELECT name FROM customers WHERE id = 4"
            )
        with mariadb_target(url) as target:
            project.ok("snapshot", "restore", "latest", "--database", "shop", "--table", "products", "--to", target)
            assert mariadb_objects(target)["tables"] == ["products"]
            assert mariadb_rows(target, "products") == mariadb_rows(url, "products")


def _name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _literal(url: str) -> str:
    return "'" + _name(url) + "'"
