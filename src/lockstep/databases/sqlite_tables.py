"""Copy some tables of a SQLite dump (the database file) into a new database file.

Each table is created from the statement SQLite keeps for it (so its column types, defaults,
NOT NULL, CHECK, PRIMARY KEY and UNIQUE constraints are the snapshot's), its rows copied in
rowid order, its indexes created, and its AUTOINCREMENT counter carried over. A foreign key
to a table not copied is cut out of the statement (`REFERENCES other (id) ON DELETE ...`, or
a whole `FOREIGN KEY (...) REFERENCES other ...` clause), and named, so the copy never claims
a relation it cannot hold. Triggers and views are not copied: they may name other tables.
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


def copy_tables(connection: sqlite3.Connection, tables: list[str]) -> list[str]:
    """Copy `tables` from the attached database `source` into `main` (one transaction, which
    the caller commits); returns what was left out, one sentence each."""
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
        copied = [
            _quoted(str(column[1]))
            for column in connection.execute(f"PRAGMA source.table_xinfo({_quoted(table)})").fetchall()
            if column[6] == 0  # not a generated column
        ]
        listed = ", ".join(copied)
        copy = f"INSERT INTO main.{_quoted(table)} ({listed}) SELECT {listed} FROM source.{_quoted(table)}"
        try:
            connection.execute(copy + " ORDER BY rowid")
        except sqlite3.OperationalError:  # WITHOUT ROWID: its primary key orders it anyway
            connection.execute(copy)
        for (index_sql,) in connection.execute(
            "SELECT sql FROM source.sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        ).fetchall():
            connection.execute(str(index_sql))
        if has_sequence:
            counter = connection.execute("SELECT seq FROM source.sqlite_sequence WHERE name = ?", (table,)).fetchone()
            if counter is not None:
                connection.execute("DELETE FROM main.sqlite_sequence WHERE name = ?", (table,))
                connection.execute("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)", (table, counter[0]))
    return left_out
