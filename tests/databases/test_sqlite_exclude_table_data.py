"""exclude_table_data on SQLite: rows deleted from the backup copy, never from the live file; a
virtual table is emptied through itself, its shadow tables never matched on their own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lockstep.databases.sqlite import ADAPTER
from tests.conftest import missing


def make_database(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        try:
            connection.execute("CREATE VIRTUAL TABLE search USING fts5(body)")
        except sqlite3.OperationalError:
            missing("this SQLite has no FTS5 (a virtual table to exclude through)")
        connection.executescript(
            """
            CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT);
            INSERT INTO notes (body) VALUES ('kept');
            INSERT INTO search (body) VALUES ('indexed-words'), ('more-indexed-words');
            """
        )
    connection.close()
    return f"sqlite:///{path}"


def dumped(url: str, patterns: list[str], copy: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dump = ADAPTER.dump(url, None, exclude_table_data=patterns)
    copy.write_bytes(dump.stdout.read())
    dump.finish()
    return dump.rows_excluded, dump.warnings


def test_a_virtual_table_is_emptied_through_itself_and_the_live_file_is_untouched(tmp_path: Path) -> None:
    url = make_database(tmp_path / "app.db")
    copy = tmp_path / "copy.sqlite3"
    excluded, warnings = dumped(url, ["search*"], copy)
    assert excluded == ("search",) and warnings == ()
    with sqlite3.connect(copy) as connection:
        assert connection.execute("SELECT count(*) FROM search").fetchone() == (0,)
        connection.execute("INSERT INTO search (search) VALUES ('integrity-check')")  # raises when damaged
        assert connection.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    connection.close()
    assert b"indexed-words" not in copy.read_bytes()
    with sqlite3.connect(tmp_path / "app.db") as connection:
        assert connection.execute("SELECT count(*) FROM search").fetchone() == (2,)
    connection.close()


def test_a_shadow_table_alone_matches_nothing_and_says_so(tmp_path: Path) -> None:
    url = make_database(tmp_path / "app.db")
    excluded, warnings = dumped(url, ["search_data"], tmp_path / "copy.sqlite3")
    assert excluded == ()
    assert warnings == ("exclude_table_data: the pattern 'search_data' matches no table; nothing was left out for it",)


def test_a_kept_table_referring_to_an_emptied_one_is_warned_about_naming_the_fix(tmp_path: Path) -> None:
    """SQLite checks no foreign key of rows already stored: the copy restores with orders'
    rows referring to customers that are not there. The snapshot says so, as PostgreSQL's does;
    a REFERENCES clause naming the table in another case still names it."""
    with sqlite3.connect(tmp_path / "shop.db") as connection:
        connection.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES Customers (id));
            CREATE TABLE carts (customer_id INTEGER REFERENCES customers (id));
            CREATE TABLE invoices (order_id INTEGER REFERENCES orders (id));
            INSERT INTO customers VALUES (1); INSERT INTO orders VALUES (10, 1); INSERT INTO carts VALUES (1);
            """
        )
    connection.close()
    copy = tmp_path / "copy.sqlite3"
    excluded, warnings = dumped(f"sqlite:///{tmp_path / 'shop.db'}", ["customers", "carts"], copy)
    assert excluded == ("carts", "customers")
    assert warnings == (
        "exclude_table_data: table orders has a foreign key to customers, whose rows are left out: a restore "
        "keeps the rows of orders that refer to rows of customers, which are not there; leave out orders's rows "
        "too, or keep customers's",
    )
    with sqlite3.connect(copy) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == [("orders", 10, "Customers", 0)]
    connection.close()
