"""The patterns of `databases.NAME.exclude_table_data`: the tables whose rows a snapshot leaves out.

One syntax for every engine, matched by lockstep itself against the table names as the manifest
lists them (so that what a pattern matched can be recorded, and one matching nothing named):
`*` is any run of characters but a dot, `?` one character but a dot, anything else stands for
itself, case included. PostgreSQL's names are `table` in the public schema and `schema.table`
elsewhere (`audit.*`: every table of the schema audit); MariaDB/MySQL's and SQLite's have no
schema, the tables being the URL's database's. Each engine's dump is then told the exact names
(pg_dump --exclude-table-data, mariadb-dump --ignore-table-data, a DELETE in SQLite's copy), so
pg_dump's own pattern rules (case folding, search_path) never come into play.

A PostgreSQL partitioned table holds no rows and is not among those names: a pattern matching it
(at any level) stands for the partitions holding its rows. A plain inheritance parent (INHERITS)
is a table of its own: a pattern matching it leaves out its own rows only, as pg_dump does.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

# What users of fnmatch or SQL's LIKE would try; refused rather than taken literally.
_NOT_PATTERN_CHARACTERS = "[]%"


def check_table_pattern(pattern: str, engine: str) -> None:
    """Raise ValueError, saying how to write it, for a pattern no table name can match as meant."""
    if not pattern.strip():
        raise ValueError("a pattern is empty: write a table name, or one with * and ? in it")
    refused = sorted({character for character in pattern if character in _NOT_PATTERN_CHARACTERS})
    if refused:
        raise ValueError(
            f"the pattern {pattern!r} has {' '.join(refused)}: only * (any characters) and ? (one character) "
            "are pattern characters"
        )
    parts = _split_outside_quotes(pattern)
    if engine == "postgresql":
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"the pattern {pattern!r} is not TABLE or SCHEMA.TABLE")
    elif len(parts) > 1:
        raise ValueError(
            f"the pattern {pattern!r} has a dot: write the table's name alone, the tables are those of the "
            "URL's database"
        )


@dataclass(frozen=True)
class TableSelection:
    """The tables some patterns matched (in the order given), and the patterns that matched none."""

    tables: tuple[str, ...]
    unmatched: tuple[str, ...]

    def warnings(self) -> tuple[str, ...]:
        """One warning per pattern that matched no table: a typo, or a table not there (yet)."""
        return tuple(
            f"exclude_table_data: the pattern {pattern!r} matches no table; nothing was left out for it"
            for pattern in self.unmatched
        )


def select_tables(
    patterns: Sequence[str], names: Iterable[str], partitions: Mapping[str, Collection[str]] | None = None
) -> TableSelection:
    """The `names` (manifest table names) that any of `patterns` matches, directly or through a
    partitioned table of `partitions` (its name -> the names of the partitions holding its rows,
    every level down), so that `events` means the rows users think of as the events table's."""
    listed = list(names)
    partitioned = partitions or {}
    expressions = {pattern: _expression(pattern) for pattern in patterns}
    through_parents = {
        partition
        for parent, held in partitioned.items()
        if any(e.fullmatch(parent) for e in expressions.values())
        for partition in held
    }
    tables = tuple(
        name for name in listed if name in through_parents or any(e.fullmatch(name) for e in expressions.values())
    )
    unmatched = tuple(
        pattern for pattern, e in expressions.items() if not any(e.fullmatch(name) for name in [*listed, *partitioned])
    )
    return TableSelection(tables, unmatched)


# What a restore does with such rows where nothing re-checks the foreign key: MariaDB/MySQL's dump
# loads with FOREIGN_KEY_CHECKS=0, SQLite's copy is the file itself.
ROWS_LEFT_DANGLING = "a restore keeps the rows of {table} that refer to rows of {referenced}, which are not there"


def references_to_emptied(
    foreign_keys: Iterable[tuple[str, str]],
    excluded: Collection[str],
    consequence: str,
    partitions: Mapping[str, Collection[str]] | None = None,
) -> tuple[str, ...]:
    """A warning per (referencing, referenced) table pair of `foreign_keys` where rows of the
    referencing table are kept and rows of the referenced one are not. `consequence` says what a
    restore then does: each engine's differs, the fix is the same. A partitioned table of
    `partitions` (as for select_tables) holds the rows of its partitions."""
    partitioned = partitions or {}

    def holders(name: str) -> Collection[str]:
        return partitioned.get(name, (name,))

    warnings = (
        f"exclude_table_data: table {name} has a foreign key to {target}, whose rows are left out: "
        f"{consequence.format(table=name, referenced=target)}; leave out {name}'s rows too, or keep {target}'s"
        for name, target in foreign_keys
        if any(held in excluded for held in holders(target)) and any(held not in excluded for held in holders(name))
    )
    return tuple(dict.fromkeys(warnings))


def _expression(pattern: str) -> re.Pattern[str]:
    translated = {"*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(translated.get(character, re.escape(character)) for character in pattern))


def _split_outside_quotes(pattern: str) -> list[str]:
    """`schema.table` in two; a dot inside double quotes (`"billing.2024"`) is part of a name."""
    parts, current, quoted = [], "", False
    for character in pattern:
        if character == '"':
            quoted = not quoted
        if character == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += character
    return [*parts, current]
