"""Some tables of a mariadb-dump (or mysqldump) dump: the dump's own text, cut to those tables,
for `snapshot restore --table`.

A dump is a session header (SET statements, /*!40101 ... */), then sections, each opened by a
comment block of its own:

    --
    -- Table structure for table `orders`
    --

(DROP TABLE and CREATE TABLE), "Dumping data for table `orders`" (LOCK TABLES, ALTER TABLE ...
DISABLE KEYS, the INSERT statements, UNLOCK TABLES, then the table's triggers, each in a
DELIMITER ;; block), "Temporary table structure for view", "Final view structure for view",
"Dumping events for database", "Dumping routines for database"; and a footer that sets the
session back (`/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;` ...). What is kept: the header, the
structure and data sections of the chosen tables (with their triggers), and the footer; views,
routines, events and every other table's sections are left out.

mariadb-dump writes each table's sections in one run (structure, data, then its triggers; with
--no-data the triggers follow the structure), one table after another, and views, events and
routines after all tables. So once every chosen table's structure was read, the first section
that is not kept ends what the restore needs: the rest of the dump is not read (on a dump whose
chosen tables come first, the gain is the reading, decrypting and scanning of all the others).
The footer, then still unread, is written from the header instead: each header statement that
saves a session variable (`SET @OLD_SQL_MODE=@@SQL_MODE, ...`) gets the one that sets it back.

The sections are found by the dump's structure, not by searching its text. A comment block
opens a section only between two statements, outside a DELIMITER ;; block (where trigger,
event and routine bodies are, which may hold any line) and outside a statement running over
several lines. Row data cannot look like a comment block: mariadb-dump writes a newline inside
a value as "\\n", so each row is one line starting with "(" or "INSERT", and every line ends
outside a string; SHOW CREATE TABLE, which gives the CREATE TABLE statements, escapes newlines
in defaults, comments and CHECK expressions the same way. The check afterwards (row counts and
checksums of the chosen tables against the manifest) would catch a dump cut anywhere else.

In a chosen table's CREATE TABLE statement, a foreign key to a table of the same database that
is not restored is cut out (its `CONSTRAINT ... FOREIGN KEY ... REFERENCES ...` item) and
named; its index (`KEY ...`) stays, as the table's own. A foreign key to a table of another
database is kept, as a whole restore keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from lockstep.databases.create_table_sql import (
    Token,
    column_list_items,
    cut,
    is_table_foreign_key,
    item_with_its_comma,
    tokenize,
)
from lockstep.errors import SourceError

# The most read as one piece: a row of a large blob is a line of gigabytes, and only the start
# of a line decides anything.
PIECE_BYTES = 1024 * 1024
# What is read of a line before deciding on it: a comment line's (a section title naming a table
# of up to 64 characters is far shorter), and any other line's start.
COMMENT_BYTES = 64 * 1024
LINE_START_BYTES = 64
# The first line of a dump by MariaDB's newer clients: a command of the `mariadb` client, not a
# statement (it has no ";").
SANDBOX = b"/*M!999999\\- "
STRUCTURE = "Table structure for table "
DATA = "Dumping data for table "
# The footer's statements: each sets back a session variable the header saved.
FOOTER = re.compile(
    rb"(?:/\*!\d+ SET [^\n]*=\s*@OLD_\w+[^\n]*\*/ ?;|SET @@SESSION\.SQL_LOG_BIN\s*=\s*@MYSQLDUMP_TEMP_LOG_BIN;"
    rb"|-- Dump completed[^\n]*)?\r?\n?"
)
# A header statement that saves a session variable, for the footer that sets it back.
SAVED = re.compile(rb"/\*!(\d+) SET @OLD_(\w+)\s*=\s*@@(\w+)")
# MySQL's tokens, enough to find the items of a CREATE TABLE statement: strings (backslash
# escapes, doubled quotes), quoted names, comments, words, single characters.
_TOKEN = re.compile(
    r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`]|``)*`|/\*.*?\*/|--[^\n]*|#[^\n]*|\s+|[A-Za-z_0-9$]+|.""",
    re.DOTALL,
)


@dataclass
class Selection:
    """What the cut found: the chosen tables whose definition the dump held, and what was left
    out of them (one sentence each)."""

    tables: set[str]
    found: set[str] = field(default_factory=set)
    left_out: list[str] = field(default_factory=list)


def tables_of_dump(source: IO[bytes], selection: Selection, piece_bytes: int = PIECE_BYTES) -> Iterator[bytes]:
    """The pieces of the dump `source` that restore the tables `selection.tables` (see the
    module's description); raises SourceError at the end, before the last piece, if the dump
    lacks one of them, so that the restore is not taken as complete."""
    keep = True  # the current section's lines go on (the header's do)
    section_table: str | None = None  # the chosen table whose structure section this is
    delimited = False  # inside DELIMITER ;; ... DELIMITER ;
    in_statement = False  # inside a statement of several lines
    line_start = True
    block: list[bytes] = []  # a comment block that may open a section
    footer: list[bytes] = []  # footer-shaped lines at the end of a section not kept
    create: list[bytes] | None = None  # a chosen table's CREATE TABLE statement, being read
    in_header = True  # before the first section
    set_back: list[bytes] = []  # the footer's statements, from the header's

    def out(piece: bytes) -> Iterator[bytes]:
        nonlocal footer
        if keep:
            yield piece
        elif FOOTER.fullmatch(piece):
            footer.append(piece)
        else:
            footer = []

    while True:
        piece = source.readline(piece_bytes)
        if not piece:
            break
        first, line_start = line_start, piece.endswith(b"\n")
        if first and not line_start:
            # Enough of the line to decide on it: a comment line whole (a section's title),
            # of any other line its start (CREATE TABLE, DELIMITER).
            limit = COMMENT_BYTES if piece.startswith(b"-") else LINE_START_BYTES
            while len(piece) < limit and (more := source.readline(piece_bytes)):
                piece += more
                if piece.endswith(b"\n"):
                    break
            line_start = piece.endswith(b"\n")
        ends_statement = line_start and piece.rstrip(b"\r\n").endswith(b";")
        if not first:  # the rest of a long line
            if create is not None:
                create.append(piece)
            else:
                yield from out(piece)
            if ends_statement:
                in_statement = False
                if create is not None:
                    yield _without_foreign_keys(b"".join(create), section_table or "", selection)
                    create = None
            continue
        if block:
            if piece.startswith(b"-- ") and line_start:
                block.append(piece)
                continue
            if piece in (b"--\n", b"--\r\n") and len(block) > 1:
                block.append(piece)
                title = "\n".join(line.rstrip(b"\r\n")[3:].decode("utf-8", "surrogateescape") for line in block[1:-1])
                keep, section_table = _section(title, selection)
                in_header = False
                if not keep and selection.tables <= selection.found:
                    yield b"".join(reversed(set_back))  # nothing chosen follows: see the module's description
                    return
                footer = []  # what looked like the footer was not the dump's end
                yield from out(b"".join(block))
                block = []
                continue
            # Not a section's comment block: its lines belong to the current section.
            for line in block:
                yield from out(line)
            block = []
        if create is not None:
            create.append(piece)
            if ends_statement:
                yield _without_foreign_keys(b"".join(create), section_table or "", selection)
                create = None
            continue
        if delimited:
            if piece.rstrip(b"\r\n") == b"DELIMITER ;":
                delimited = False
            yield from out(piece)
            continue
        if in_statement:
            in_statement = not ends_statement
            yield from out(piece)
            continue
        bare = piece.rstrip(b"\r\n")
        if bare == b"--" and line_start:
            block = [piece]
            continue
        if in_header:
            set_back += [
                b"/*!%s SET %s=@OLD_%s */;\n" % (version, variable, name)
                for version, name, variable in SAVED.findall(bare)
            ]
        if not bare or bare.startswith(b"--") or bare.startswith(SANDBOX):
            yield from out(piece)
            continue
        if bare.startswith(b"DELIMITER ") and line_start:
            delimited = bare != b"DELIMITER ;"
            yield from out(piece)
            continue
        if keep and section_table is not None and piece.startswith(b"CREATE TABLE "):
            selection.found.add(section_table)
            if ends_statement:
                yield _without_foreign_keys(piece, section_table, selection)
            else:
                create = [piece]
            continue
        in_statement = not ends_statement
        yield from out(piece)
    for line in block:
        yield from out(line)
    missing = [table for table in selection.tables if table not in selection.found]
    if missing:
        raise SourceError(
            "the dump holds no table definition for " + ", ".join(sorted(missing)),
            "restore the whole database with --to URL and copy the table from there",
        )
    yield b"".join(footer)


def _section(title: str, selection: Selection) -> tuple[bool, str | None]:
    """Whether the section a comment block titled `title` opens is kept, and the chosen table
    whose structure it holds."""
    for prefix in (STRUCTURE, DATA):
        if title.startswith(prefix):
            name = _backquoted(title[len(prefix) :])
            if name is not None and name in selection.tables:
                return True, name if prefix == STRUCTURE else None
            return False, None
    return False, None


def _backquoted(text: str) -> str | None:
    """The name in `text` if all of it is one backquoted name (`` for a backquote); a newline
    in the name is written "\\n-- " in the comment, which the comment's lines were joined back
    from."""
    if len(text) < 2 or text[0] != "`" or text[-1] != "`":
        return None
    inner = text[1:-1]
    if inner.replace("``", "").count("`"):
        return None
    return inner.replace("``", "`")


def _tokens(sql: str) -> list[Token]:
    """MySQL's tokens without its comments; a /*!NNNNN ... */ comment is code MySQL runs, and stays."""
    return [
        token
        for token in tokenize(sql, _TOKEN, ("--", "#"))
        if not (token.text.startswith("/*") and not token.text.startswith("/*!"))
    ]


def _without_foreign_keys(statement: bytes, table: str, selection: Selection) -> bytes:
    text, left_out = without_foreign_keys(statement.decode("utf-8", "surrogateescape"), table, selection.tables)
    selection.left_out += left_out
    return text.encode("utf-8", "surrogateescape")


def without_foreign_keys(sql: str, table: str, kept: set[str]) -> tuple[str, list[str]]:
    """`sql` (CREATE TABLE `table` as SHOW CREATE TABLE writes it) without its foreign keys to
    tables of the same database not in `kept`, and one sentence for each key cut out."""
    tokens = _tokens(sql)
    opening, items = column_list_items(tokens)
    if opening is None:
        return sql, []
    cuts: list[tuple[int, int]] = []
    left_out: list[str] = []
    for number, (first, last) in enumerate(items):
        if not is_table_foreign_key(tokens, first, last):
            continue
        named = tokens[first].word == "CONSTRAINT"
        references = next((index for index in range(first, last) if tokens[index].word == "REFERENCES"), None)
        if references is None or references + 1 > last:
            continue
        target = tokens[references + 1].name
        if references + 2 <= last and tokens[references + 2].text == ".":
            continue  # `other_database`.`table`: not this database's
        if target in kept:
            continue
        constraint = f" {tokens[first + 1].name}" if named else ""
        left_out.append(f"foreign key{constraint} of {table} (references {target}, not restored)")
        cuts.append(item_with_its_comma(tokens, opening, items, number))
    return cut(sql, cuts), left_out
