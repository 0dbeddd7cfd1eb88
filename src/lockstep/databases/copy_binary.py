"""A table's rows sent to the server in binary COPY format instead of the dump's COPY text.

Reading COPY text is most of what the server spends loading a table (the shop database's
`events`: 6.4 s as text, 3.2 s in binary form), so a restore turns the rows of each table whose
columns are all of the types below into binary rows first (`_copy_binary`, a C extension that
knows the exact text pg_dump writes for them). A table with any other type, an install without
the extension, or a dump in an encoding whose multi-byte characters can hold a backslash byte
loads as text, as before. What is restored is the same either way; the restore's row check
compares it with the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from lockstep.errors import SourceError

try:
    from lockstep.databases._copy_binary import convert
except ImportError:  # not built (no compiler when installed)
    convert = None  # type: ignore[assignment]

Cursor = psycopg.Cursor[tuple[Any, ...]]

# The binary COPY format's header (signature, flags, header extension length) and trailer.
HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

# Built-in type OIDs (pg_type.dat) and the converter's letter for each. A domain's column is
# described with its base type, whose binary form the domain's receive function takes.
KIND_BY_TYPE = {
    21: b"h",  # int2
    23: b"i",  # int4
    20: b"l",  # int8
    25: b"t",  # text
    1043: b"t",  # varchar
    1042: b"t",  # bpchar
    114: b"t",  # json
    3802: b"j",  # jsonb
    16: b"b",  # bool
    1184: b"T",  # timestamptz
    1114: b"S",  # timestamp
    1082: b"d",  # date
    1700: b"n",  # numeric
    2950: b"u",  # uuid
}

# Client encodings whose multi-byte characters may contain the byte of a backslash: COPY text
# in them cannot be de-escaped byte by byte.
_ENCODINGS_EMBEDDING_ASCII = {"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"}


def binary_statement(cursor: Cursor, copy_statement: bytes) -> tuple[bytes, bytes] | None:
    """(the COPY statement in binary format, the converter's column kinds) when this table's
    rows can go as binary, else None. Asks the server for the columns' types, in the order the
    statement lists them, with the connection's session (client_encoding) already set."""
    if convert is None:
        return None
    parts = _copy_parts(copy_statement)
    if parts is None:
        return None
    table, columns = parts
    encoding = cursor.execute("SHOW client_encoding").fetchone()
    if encoding is None or str(encoding[0]).upper() in _ENCODINGS_EMBEDDING_ASCII:
        return None
    try:
        cursor.execute(b"SELECT " + columns + b" FROM " + table + b" LIMIT 0")
    except psycopg.Error:
        return None  # the COPY itself will say what is wrong
    kinds = [KIND_BY_TYPE.get(column.type_code) for column in cursor.description or ()]
    if not kinds or None in kinds:
        return None
    return copy_statement + b" WITH (FORMAT binary)", b"".join(kind for kind in kinds if kind is not None)


def rows(
    text: bytes, kinds: bytes, copy_statement: bytes, rows_before: Callable[[], int | None] = lambda: 0
) -> tuple[bytes, int]:
    """`text`'s whole rows in binary form, and how many there are. A row the converter cannot
    read raises SourceError naming the table, the row and the column (never the value); the row
    is numbered within the table when `rows_before()` says how many of its rows came before
    `text` (it is only asked then), else within `text`."""
    assert convert is not None
    try:
        return convert(text, kinds)
    except ValueError as error:
        parts = _copy_parts(copy_statement)
        table = parts[0].decode(errors="replace") if parts else "a table"
        if len(error.args) != 2:
            raise SourceError(f"the dump's rows of {table} cannot be read: {error}") from None
        row, reason = error.args
        before = rows_before()
        where = f"row {before + row}" if before is not None else f"row {row} of one piece of them"
        raise SourceError(f"the dump's rows of {table} cannot be read: {where}, {reason}") from None


def _copy_parts(statement: bytes) -> tuple[bytes, bytes] | None:
    """The table and the column list of `COPY table (column, ...) FROM stdin`, as pg_dump writes
    it (identifiers bare or double-quoted), or None for any other shape."""
    prefix, suffix = b"COPY ", b" FROM stdin"
    if not statement.startswith(prefix) or not statement.endswith(suffix):
        return None
    text = statement[len(prefix) : -len(suffix)]
    position = _skip_name(text, 0)
    while position is not None and text[position : position + 1] == b".":
        position = _skip_name(text, position + 1)
    if position is None or text[position : position + 2] != b" (" or not text.endswith(b")"):
        return None
    columns = text[position + 2 : -1]
    at: int | None = 0
    while at is not None and at < len(columns):  # the list is names and ", " only
        at = _skip_name(columns, at)
        if at is not None and at < len(columns):
            at = at + 2 if columns[at : at + 2] == b", " else None
    if at is None or not columns:
        return None
    return text[:position], columns


def _skip_name(text: bytes, position: int) -> int | None:
    """Where the identifier starting at `position` ends, or None if none starts there."""
    if text[position : position + 1] == b'"':
        position += 1
        while True:
            end = text.find(b'"', position)
            if end < 0:
                return None
            if text[end + 1 : end + 2] != b'"':
                return end + 1
            position = end + 2
    start = position
    while position < len(text) and text[position : position + 1] not in (b".", b" ", b",", b"(", b")", b'"'):
        position += 1
    return position if position > start else None
