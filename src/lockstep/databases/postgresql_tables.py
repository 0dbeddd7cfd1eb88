"""Which entries of a custom-format archive restore some of its tables, and nothing else.

A table's entries are found through the dependencies pg_dump records in the table of contents,
not by their names: its TABLE entry, then, repeatedly, every entry of the kinds that belong to a
table (its rows, indexes, constraints, column defaults, the sequences of its serial and identity
columns and their values, comments) whose dependencies are all chosen. What a table's definition
needs in order to be created (its schema, the types, domains, functions, collations and
extensions it depends on) comes along. An entry that belongs to a chosen table but depends on
something not chosen (a foreign key to a table not restored, a default calling a function of a
table left out) is left out, and named, so the caller can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lockstep.databases.postgresql import table_name
from lockstep.databases.postgresql_archive import ArchiveHead, TocEntry

# The kinds of entry that belong to a table: restored with it when all their dependencies are.
_BELONGING = frozenset(
    {
        "TABLE DATA",
        "INDEX",
        "CONSTRAINT",
        "CHECK CONSTRAINT",
        "FK CONSTRAINT",
        "DEFAULT",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "COMMENT",
    }
)
# What a chosen object's definition may need to exist first: brought along with it.
_PREREQUISITES = frozenset({"SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "FUNCTION", "COLLATION", "SEQUENCE"})


@dataclass(frozen=True)
class TableSelection:
    """The dump IDs to restore (in table-of-contents order), and what was left out, one
    sentence each (e.g. `foreign key orders_customer_id_fkey of orders (references customers,
    not restored)`)."""

    dump_ids: list[int]
    left_out: list[str] = field(default_factory=list)


def archive_tables(head: ArchiveHead) -> dict[str, TocEntry]:
    """The archive's tables by their manifest names (`table`, or `schema.table`)."""
    return {table_name(entry.namespace, entry.tag): entry for entry in head.entries if entry.description == "TABLE"}


def select_tables(head: ArchiveHead, names: list[str]) -> TableSelection:
    """The entries that restore the tables `names` (manifest names, all in the archive)."""
    by_id = {entry.dump_id: entry for entry in head.entries}
    tables = archive_tables(head)
    chosen_tables = {tables[name].dump_id for name in names}
    chosen = set(chosen_tables)
    _add_prerequisites(chosen, by_id)

    def satisfied(entry: TocEntry) -> bool:
        return all(dependency in chosen or dependency not in by_id for dependency in entry.dependencies)

    changed = True
    while changed:
        changed = False
        for entry in head.entries:
            if entry.dump_id in chosen or entry.description not in _BELONGING or not entry.dependencies:
                continue
            if not any(dependency in chosen for dependency in entry.dependencies):
                continue
            if satisfied(entry):
                chosen.add(entry.dump_id)
                _add_prerequisites(chosen, by_id)
                changed = True
    left_out = [
        _left_out(entry, chosen, by_id)
        for entry in head.entries
        if entry.dump_id not in chosen
        and entry.description in _BELONGING
        and _owner_table(entry, by_id) in chosen_tables
    ]
    return TableSelection([entry.dump_id for entry in head.entries if entry.dump_id in chosen], left_out)


def _add_prerequisites(chosen: set[int], by_id: dict[int, TocEntry]) -> None:
    """Add to `chosen` what its entries' definitions need first (transitively)."""
    pending = list(chosen)
    while pending:
        entry = by_id.get(pending.pop())
        if entry is None:
            continue
        for dependency in entry.dependencies:
            needed = by_id.get(dependency)
            if needed is not None and dependency not in chosen and needed.description in _PREREQUISITES:
                chosen.add(dependency)
                pending.append(dependency)


def _owner_table(entry: TocEntry, by_id: dict[int, TocEntry]) -> int | None:
    """The dump ID of the table an entry belongs to: for a constraint, the one whose name starts
    its tag (`orders orders_customer_id_fkey`; a foreign key depends on both tables), otherwise
    the first table it depends on."""
    tables = [by_id[d] for d in entry.dependencies if d in by_id and by_id[d].description == "TABLE"]
    if entry.description.endswith("CONSTRAINT"):
        for table in tables:
            if table.namespace == entry.namespace and entry.tag.startswith(table.tag + " "):
                return table.dump_id
    return tables[0].dump_id if tables else None


def _left_out(entry: TocEntry, chosen: set[int], by_id: dict[int, TocEntry]) -> str:
    missing = sorted(
        {_describe_dependency(by_id[d], by_id) for d in entry.dependencies if d in by_id and d not in chosen}
    )
    owner = by_id.get(_owner_table(entry, by_id) or -1)
    of_table = "" if owner is None else table_name(owner.namespace, owner.tag)
    if entry.description == "FK CONSTRAINT":
        constraint = entry.tag[len(owner.tag) + 1 :] if owner is not None else entry.tag
        return f"foreign key {constraint} of {of_table} (references {', '.join(missing)}, not restored)"
    return f"{entry.description.lower()} {entry.tag} of {of_table} (needs {', '.join(missing)}, not restored)"


def _describe_dependency(entry: TocEntry, by_id: dict[int, TocEntry]) -> str:
    """A dependency as the user knows it: a table by its name, a table's constraint or index by
    its table, anything else by its kind and name."""
    if entry.description == "TABLE":
        return table_name(entry.namespace, entry.tag)
    if entry.description in ("CONSTRAINT", "INDEX"):
        owner = _owner_table(entry, by_id)
        if owner is not None:
            return table_name(by_id[owner].namespace, by_id[owner].tag)
    return f"{entry.description.lower()} {entry.tag}"
