"""MariaDB rows as text the server hashes: for the fingerprint of tables that CHECKSUM TABLE
cannot describe, and for `snapshot diff`.

Two databases holding the same values must give the same text, whichever server and session
computes it, and different values must give different text. Columns are joined with a 0x1f
separator, each QUOTE()d, so NULL (`NULL`) and the string 'NULL' (`'NULL'`) differ; FLOAT
and DOUBLE values are read as DOUBLE, whose text is exact; text columns are converted to
utf8mb4, which holds every character of every other character set (bytes that are not
characters of their column's set, which a server accepts only in ascii columns and the like,
become "?" and so are not told apart).

A system-versioned table's ROW START and ROW END columns are left out of its current rows'
text: a restore without the history sets them to the moment of the restore, so they never
match the source's. Its history (`history_hash_sum`), restored only from a dump that holds it,
has them, as Unix times (the same whatever the session's time zone).
"""

from __future__ import annotations

from dataclasses import dataclass

# information_schema.columns.generation_expression of a system-versioned table's period columns.
PERIOD_COLUMNS = ("ROW START", "ROW END")
# Types whose values are read as DOUBLE, so their text has every digit.
APPROXIMATE_TYPES = frozenset({"float", "double"})
# The columns a row's text is made of, in order, for `table_schema = {schema}` (SQL text), with
# each text column's collation: converted to utf8mb4 the text is the same in any character set.
COLUMNS_QUERY = (
    "SELECT table_name, column_name, column_type, data_type, COALESCE(character_set_name, ''),"
    " COALESCE(collation_name, '')"
    " FROM information_schema.columns WHERE table_schema = {schema}"
    " AND COALESCE(generation_expression, '') NOT IN ('ROW START', 'ROW END')"
    " ORDER BY table_name, ordinal_position"
)


@dataclass(frozen=True)
class Column:
    """A column as its text needs it: `data_type` and `charset` from information_schema.columns."""

    name: str
    data_type: str = ""  # e.g. "varchar", "float"
    charset: str = ""  # empty for columns that hold no text (numbers, dates, binary strings)


def column_type_with_charset(column_type: str, charset: str, collation: str) -> str:
    """A column's type as `snapshot diff` compares and shows it: `varchar(50) CHARACTER SET
    latin1 COLLATE latin1_swedish_ci` for text, the bare type otherwise."""
    if not charset:
        return column_type
    return f"{column_type} CHARACTER SET {charset}" + (f" COLLATE {collation}" if collation else "")


def identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def row_text(columns: list[Column]) -> str:
    """SQL for one row's text over `columns` (in this order)."""
    if not columns:
        return "''"
    return "CONCAT_WS(0x1f, " + ", ".join(_value_text(column) for column in columns) + ")"


def _value_text(column: Column) -> str:
    value = identifier(column.name)
    if column.data_type in APPROXIMATE_TYPES:
        # As text a FLOAT has 6 significant digits (0.10000001 reads as 0.1); as a DOUBLE it is
        # exact, and a DOUBLE's text has as many digits as it needs.
        value = f"CAST({value} AS DOUBLE)"
    elif column.charset:
        # Text in one character set, whatever each column's: CONCAT_WS refuses to join, say,
        # latin1 and cp1251 columns ("Illegal mix of collations"). A no-op for utf8mb4 columns.
        value = f"CONVERT({value} USING utf8mb4)"
    return f"QUOTE({value})"


def row_hash_sum(table: str, columns: list[Column]) -> str:
    """SQL for a table's checksum: the sum of its rows' hashes (64 bits of MD5 each), so that
    the order the rows are read in does not matter."""
    return f"SELECT {_hash_sum(row_text(columns))} FROM {identifier(table)}"


def history_hash_sum(table: str, columns: list[Column], start: str, end: str) -> str:
    """SQL for the count and checksum of every version of a system-versioned table's rows
    (`FOR SYSTEM_TIME ALL`: its history and its current rows), each with its period's `start`
    and `end` (the ROW START and ROW END columns, or the pseudo-columns ROW_START and ROW_END)."""
    period = [f"QUOTE(UNIX_TIMESTAMP({identifier(name)}))" for name in (start, end)]
    text = "CONCAT_WS(0x1f, " + ", ".join([*(_value_text(column) for column in columns), *period]) + ")"
    return f"SELECT COUNT(*), {_hash_sum(text)} FROM {identifier(table)} FOR SYSTEM_TIME ALL"


def _hash_sum(text: str) -> str:
    return f"COALESCE(SUM(CAST(CONV(SUBSTR(MD5({text}), 1, 16), 16, 10) AS UNSIGNED)), 0)"
