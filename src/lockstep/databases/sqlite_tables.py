"""Copy some tables of a SQLite dump (the database file) into a new database file.

Each table is created from the statement SQLite keeps for it (so its column types, defaults,
NOT NULL, CHECK, PRIMARY KEY and UNIQUE constraints are the snapshot's), its rows copied in
rowid order with their rowids (a table without INTEGER PRIMARY KEY keeps them too: applications
and FTS external-content tables refer to rows by rowid), its indexes created, and its
AUTOINCREMENT counter carried over. A foreign key to a table not copied is cut out of the
statement (`REFERENCES other (id) ON DELETE ...`, or a whole `FOREIGN KEY (...) REFERENCES
other ...` clause), and named, so the copy never claims a relation it cannot hold.

The triggers on a copied table are created once every table is copied (so none fires on the
copied rows). A trigger whose body uses a table or column that was not copied is left out and
named: SQLite would accept it, then fail every INSERT, UPDATE or DELETE that fires it, and every
ALTER TABLE ... RENAME in the database. Each is checked by compiling (EXPLAIN, which runs
nothing) the statements that fire it. Views are not copied: they may name other tables, and a
view is a query to re-create from the application's schema, not data.
"""

from __future__ import annotations

import re
import sqlite3

from lockstep.databases.create_table_sql import (
    Token,
    column_list_items,
    cut,
    is_table_foreign_key,
    item_with_its_comma,
    tokenize,
)

# SQLite's tokens, enough to find the clauses of a CREATE TABLE statement: quoted strings and
# names, comments, words, and single characters.
_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|$)|\s+|[A-Za-z_0-9$]+|.""",
    re.DOTALL,
)
_ACTIONS = {"SET", "NULL", "DEFAULT", "CASCADE", "RESTRICT", "NO", "ACTION"}


def _tokens(sql: str) -> list[Token]:
    return tokenize(sql, _TOKEN, ("--", "/*"))


def without_foreign_keys(sql: str, kept: set[str]) -> tuple[str, list[str]]:
    """`sql` (a CREATE TABLE statement) without its foreign keys to tables not in `kept` (names
    compared without case, as SQLite does), and the tables those keys referenced."""
    tokens = _tokens(sql)
    kept_lower = {name.lower() for name in kept}
    opening, items = column_list_items(tokens)
    if opening is None:
        return sql, []  # CREATE TABLE ... AS SELECT: no constraints at all
    cuts: list[tuple[int, int]] = []  # character spans to remove
    referenced: list[str] = []
    for number, (first, last) in enumerate(items):
        if is_table_foreign_key(tokens, first, last):
            target = _referenced(tokens, first, last)
            if target is not None and target.lower() not in kept_lower:
                referenced.append(target)
                cuts.append(item_with_its_comma(tokens, opening, items, number))
            continue
        index = first
        while index <= last:
            if tokens[index].word == "REFERENCES":
                clause_start = index
                if index - 2 >= first and tokens[index - 2].word == "CONSTRAINT":
                    clause_start = index - 2
                end = _clause_end(tokens, index, last)
                target = tokens[index + 1].name if index + 1 <= last else None
                if target is not None and target.lower() not in kept_lower:
                    referenced.append(target)
                    cuts.append((tokens[clause_start].start, tokens[end].end))
                index = end + 1
            else:
                index += 1
    return cut(sql, cuts), referenced


def _referenced(tokens: list[Token], first: int, last: int) -> str | None:
    for index in range(first, last):
        if tokens[index].word == "REFERENCES":
            return tokens[index + 1].name
    return None


def _clause_end(tokens: list[Token], references: int, last: int) -> int:
    """The last token of the foreign-key clause that starts at REFERENCES."""
    index = references + 1  # the table
    if index + 1 <= last and tokens[index + 1].text == "(":
        depth = 0
        for inner in range(index + 1, last + 1):
            if tokens[inner].text == "(":
                depth += 1
            elif tokens[inner].text == ")":
                depth -= 1
                if depth == 0:
                    index = inner
                    break
    while index + 1 <= last:
        word = tokens[index + 1].word
        if word == "ON" and index + 2 <= last:
            index += 2  # ON DELETE / ON UPDATE
            while index + 1 <= last and tokens[index + 1].word in _ACTIONS:
                index += 1
        elif index + 2 <= last and (word == "MATCH" or (word == "NOT" and tokens[index + 2].word == "DEFERRABLE")):
            index += 2
        elif word == "DEFERRABLE":
            index += 1
        elif word == "INITIALLY" and index + 2 <= last:
            index += 2
        else:
            break
    return index


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The names SQLite gives a rowid table's rowid; a column of that name hides it.
_ROWID_NAMES = ("rowid", "_rowid_", "oid")


def copy_tables(connection: sqlite3.Connection, tables: list[str]) -> list[str]:
    """Copy `tables` from the attached database `source` into `main` (one transaction, which
    the caller commits), then their triggers; returns what was left out, one sentence each."""
    left_out: list[str] = []
    kept = set(tables)
    has_sequence = (
        connection.execute("SELECT 1 FROM source.sqlite_master WHERE name = 'sqlite_sequence'").fetchone() is not None
    )
    for table in tables:
        row = connection.execute(
            "SELECT sql FROM source.sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        if row is None or row[0] is None:
            raise sqlite3.OperationalError(f"the dump has no table {table}")
        statement, referenced = without_foreign_keys(str(row[0]), kept)
        if referenced:
            keys = connection.execute(f"PRAGMA source.foreign_key_list({_quoted(table)})").fetchall()
            dropped = {str(key[2]).lower() for key in keys} - {name.lower() for name in kept}
            for target in sorted(dropped):
                columns = ", ".join(str(key[3]) for key in keys if str(key[2]).lower() == target)
                shown = next(str(key[2]) for key in keys if str(key[2]).lower() == target)
                left_out.append(f"foreign key ({columns}) of {table} (references {shown}, not restored)")
        connection.execute(statement)
        left_out += _copy_rows(connection, table)
        for (index_sql,) in connection.execute(
            "SELECT sql FROM source.sqlite_master WHERE type = 'index' AND tbl_name = ? COLLATE NOCASE"
            " AND sql IS NOT NULL ORDER BY rowid",
            (table,),
        ).fetchall():
            connection.execute(str(index_sql))
        if has_sequence:
            counter = connection.execute("SELECT seq FROM source.sqlite_sequence WHERE name = ?", (table,)).fetchone()
            if counter is not None:
                connection.execute("DELETE FROM main.sqlite_sequence WHERE name = ?", (table,))
                connection.execute("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)", (table, counter[0]))
    for table in tables:
        left_out += _create_triggers(connection, table)
    return left_out


def _copy_rows(connection: sqlite3.Connection, table: str) -> list[str]:
    """Copy the rows of `table` in rowid order with their rowids (primary key order and no
    rowid for a WITHOUT ROWID table); what could not be kept, one sentence."""
    columns = connection.execute(f"PRAGMA source.table_xinfo({_quoted(table)})").fetchall()
    names = [str(column[1]) for column in columns if column[6] == 0]  # not generated
    listed = ", ".join(_quoted(name) for name in names)
    taken = {str(column[1]).lower() for column in columns}
    rowid = next((name for name in _ROWID_NAMES if name not in taken), None)
    source = f"source.{_quoted(table)}"
    if rowid is not None and _has_rowid(connection, source, rowid):
        connection.execute(
            f"INSERT INTO main.{_quoted(table)} ({rowid}, {listed}) SELECT {rowid}, {listed} FROM {source}"
            f" ORDER BY {rowid}"
        )
        return []
    connection.execute(f"INSERT INTO main.{_quoted(table)} ({listed}) SELECT {listed} FROM {source}")
    if rowid is None:
        return [f"rowids of {table} (its columns rowid, _rowid_ and oid hide them; its rows were renumbered)"]
    return []


def _has_rowid(connection: sqlite3.Connection, source: str, rowid: str) -> bool:
    """Whether the table has a rowid (not WITHOUT ROWID, nor a virtual table without one)."""
    try:
        connection.execute(f"SELECT {rowid} FROM {source} LIMIT 0")
    except sqlite3.OperationalError:
        return False
    return True


def _create_triggers(connection: sqlite3.Connection, table: str) -> list[str]:
    """Create the triggers on `table` whose bodies compile in the copy; the others are left out,
    one sentence each (see the module's description)."""
    left_out: list[str] = []
    triggers = connection.execute(
        "SELECT name, sql FROM source.sqlite_master WHERE type = 'trigger' AND tbl_name = ? COLLATE NOCASE"
        " AND sql IS NOT NULL ORDER BY rowid",
        (table,),
    ).fetchall()
    if not triggers:
        return left_out
    columns = [
        _quoted(str(column[1]))
        for column in connection.execute(f"PRAGMA main.table_xinfo({_quoted(table)})").fetchall()
        if column[6] == 0
    ]
    firing = [
        f"EXPLAIN INSERT INTO main.{_quoted(table)} DEFAULT VALUES",
        f"EXPLAIN DELETE FROM main.{_quoted(table)}",
        f"EXPLAIN UPDATE main.{_quoted(table)} SET " + ", ".join(f"{name} = {name}" for name in columns),
    ]
    for number, (name, sql) in enumerate(triggers):
        connection.execute("SAVEPOINT trigger_copy")
        try:
            connection.execute(str(sql))
            for statement in firing:
                # Each trigger's own text: Python's statement cache would run the EXPLAIN compiled
                # before this trigger existed, which SQLite does not compile again.
                connection.execute(f"{statement} /* trigger {number} */").fetchall()
        except sqlite3.Error as error:
            connection.execute("ROLLBACK TO trigger_copy")
            left_out.append(f"trigger {name} of {table} (not restored: {error})")
        connection.execute("RELEASE trigger_copy")
    return left_out
