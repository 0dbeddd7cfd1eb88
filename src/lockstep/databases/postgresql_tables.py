"""Which entries of a custom-format archive restore some of its tables, and nothing else.

A table's entries are found through the dependencies pg_dump records in the table of contents,
not by their names: its TABLE entry (a partitioned table's partitions with it, at every level),
then, repeatedly, every entry of the kinds that belong to a table (its rows, indexes,
constraints, column defaults, the sequences of its serial and identity columns and their
values, triggers, rules, extended statistics, row-level security and policies, grants,
comments, the partitions' ATTACH) that depends on something chosen and whose other
dependencies are chosen too. What a definition needs in order to be created (its schema, the
types, domains, functions, collations and extensions it depends on: a trigger's function) comes
along. An entry that belongs to a chosen table but depends on something not chosen (a foreign
key to a table not restored, a policy reading one) is left out, and named, so the caller can
say so. Grants and policies naming a role the target server lacks are left out by the caller
(postgresql_roles.py, which keeps an entry's grants to the roles that exist), as in a whole
restore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lockstep.databases.base import TableNotInDump
from lockstep.databases.postgresql import table_name
from lockstep.databases.postgresql_archive import ArchiveHead, TocEntry
from lockstep.errors import NotFound

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
        "ACL",
        "TRIGGER",
        "ROW SECURITY",
        "POLICY",
        "TABLE ATTACH",
        "INDEX ATTACH",
        "RULE",
        "STATISTICS",
    }
)
# What a chosen object's definition may need to exist first: brought along with it.
_PREREQUISITES = frozenset({"SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "FUNCTION", "COLLATION", "SEQUENCE"})
# A role an ACL entry's statements name (pg_dump's buildACLCommands: one grantee a statement,
# quoted by fmtId where needed; PUBLIC is a keyword, not a role).
_ACL_ROLE = re.compile(
    r'(?:\bTO|\bFROM|\bSESSION AUTHORIZATION) ("(?:[^"]|"")*"|[^\s;"]+)(?: WITH GRANT OPTION)?;$', re.M
)


@dataclass(frozen=True)
class TableSelection:
    """The dump IDs to restore (in table-of-contents order), the partitions that come with the
    chosen tables (manifest names), and what was left out, one sentence each (e.g. `foreign key
    orders_customer_id_fkey of orders (references customers, not restored)`)."""

    dump_ids: list[int]
    partitions: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def archive_tables(head: ArchiveHead) -> dict[str, TocEntry]:
    """The archive's tables by their manifest names (`table`, or `schema.table`)."""
    return {table_name(entry.namespace, entry.tag): entry for entry in head.entries if entry.description == "TABLE"}


def acl_roles(entry: TocEntry) -> set[str]:
    """The roles an ACL entry grants to, revokes from or grants as."""
    return acl_statement_roles(entry.definition)


def acl_statement_roles(statements: str) -> set[str]:
    """The roles ACL statements (an ACL entry's, or one of them) grant to, revoke from or grant as."""
    named = _ACL_ROLE.findall(statements)
    return {role[1:-1].replace('""', '"') if role.startswith('"') else role for role in named if role != "PUBLIC"}


def grants_left_out(entry: TocEntry, roles: list[str]) -> str:
    """What the user reads of an ACL entry left out for want of `roles` on the target server."""
    kind, _, name = entry.tag.partition(" ")
    schema = "" if entry.namespace in ("", "public") else f" in schema {entry.namespace}"
    return (
        f"grants on {kind.lower()} {name}{schema} (the target server has no role {', '.join(roles)}:"
        " create it, then grant by hand)"
    )


def check_tables(head: ArchiveHead, names: list[str]) -> None:
    """Refuse a table the archive lacks (TableNotInDump: the manifest does not record a
    partitioned table, so only the archive knows it), and, with NotFound (exit 13), a table whose
    definition needs a table not asked for: a partition without the table it is a partition of
    (its keys and its sequence belong to that table, which restores it with them), a table that
    inherits from another or has a column of another's row type."""
    by_id = {entry.dump_id: entry for entry in head.entries}
    parents = _partition_parents(head, by_id)
    tables = archive_tables(head)
    if unknown := [name for name in names if name not in tables]:
        raise TableNotInDump(unknown[0])
    chosen = {tables[name].dump_id for name in names}
    restored = chosen | set(_partitions(head, chosen, parents))
    for name in names:
        table = tables[name]
        if table.dump_id in parents and parents[table.dump_id] not in restored:
            top = table.dump_id
            while top in parents:
                top = parents[top]
            partitioned = table_name(by_id[top].namespace, by_id[top].tag)
            raise NotFound(
                f"table {name} is a partition of {partitioned}: it cannot be restored without it",
                f"restore --table {partitioned}: its partitions, {name} among them, come with it",
            )
        needed = [by_id[d] for d in table.dependencies if d in by_id and d not in restored]
        if missing := sorted(
            {table_name(other.namespace, other.tag) for other in needed if other.description == "TABLE"}
        ):
            raise NotFound(
                f"table {name} cannot be restored without {', '.join(missing)}, which its definition names"
                " (it inherits from it, or has a column of its row type)",
                f"add --table {' --table '.join(missing)}",
            )


def select_tables(head: ArchiveHead, names: list[str]) -> TableSelection:
    """The entries that restore the tables `names` (manifest names, all in the archive) and
    their partitions. Grants and policies naming roles the target server lacks are for the
    caller to leave out (postgresql_roles.py)."""
    by_id = {entry.dump_id: entry for entry in head.entries}
    tables = archive_tables(head)
    chosen_tables = {tables[name].dump_id for name in names}
    partitions = _partitions(head, chosen_tables, _partition_parents(head, by_id))
    chosen_tables |= set(partitions)
    chosen = set(chosen_tables)
    _add_prerequisites(chosen, by_id)

    changed = True
    while changed:
        changed = False
        for entry in head.entries:
            if entry.dump_id in chosen or entry.description not in _BELONGING:
                continue
            if not any(dependency in chosen for dependency in entry.dependencies):
                continue
            if not _blockers(entry, chosen, by_id):
                chosen |= _prerequisites({entry.dump_id}, chosen, by_id) | {entry.dump_id}
                changed = True
    left_out = [
        _left_out(entry, chosen, by_id)
        for entry in head.entries
        if entry.dump_id not in chosen
        and entry.description in _BELONGING
        and _owner_table(entry, by_id) in chosen_tables
    ]
    return TableSelection(
        [entry.dump_id for entry in head.entries if entry.dump_id in chosen],
        [table_name(by_id[dump_id].namespace, by_id[dump_id].tag) for dump_id in partitions],
        left_out,
    )


def _partition_parents(head: ArchiveHead, by_id: dict[int, TocEntry]) -> dict[int, int]:
    """Each partition's partitioned table (dump IDs), from the TABLE ATTACH entries: one depends
    on both tables, and is tagged with the partition's name."""
    parents: dict[int, int] = {}
    for entry in head.entries:
        if entry.description != "TABLE ATTACH":
            continue
        tables = {d for d in entry.dependencies if d in by_id and by_id[d].description == "TABLE"}
        partition = [d for d in tables if by_id[d].tag == entry.tag and by_id[d].namespace == entry.namespace]
        if len(partition) == 1 and len(tables) == 2:
            parents[partition[0]] = (tables - set(partition)).pop()
    return parents


def _partitions(head: ArchiveHead, tables: set[int], parents: dict[int, int]) -> list[int]:
    """The partitions of `tables`, at every level, not among them (dump IDs, in table-of-contents
    order: pg_dump lists a partition after the table it is a partition of)."""
    found: list[int] = []
    within = set(tables)
    for entry in head.entries:
        if parents.get(entry.dump_id) in within and entry.dump_id not in within:
            found.append(entry.dump_id)
            within.add(entry.dump_id)
    return found


def _add_prerequisites(chosen: set[int], by_id: dict[int, TocEntry]) -> None:
    """Add to `chosen` what its entries' definitions need first (transitively)."""
    chosen |= _prerequisites(chosen, chosen, by_id)


def _prerequisites(dump_ids: set[int], chosen: set[int], by_id: dict[int, TocEntry]) -> set[int]:
    """What the definitions of `dump_ids` need first (transitively), not already `chosen`."""
    found: set[int] = set()
    pending = list(dump_ids)
    while pending:
        entry = by_id.get(pending.pop())
        if entry is None:
            continue
        for dependency in entry.dependencies:
            needed = by_id.get(dependency)
            if needed is not None and dependency not in chosen | found and needed.description in _PREREQUISITES:
                found.add(dependency)
                pending.append(dependency)
    return found


def _blockers(entry: TocEntry, available: set[int], by_id: dict[int, TocEntry]) -> set[int]:
    """What `entry`, or a prerequisite it would bring along, depends on that is not `available`
    (a default calling a function whose SQL body reads a table not restored needs that table)."""
    brought = [entry, *(by_id[d] for d in _prerequisites({entry.dump_id}, available, by_id))]
    return {d for item in brought for d in item.dependencies if d in by_id and d not in available} - {
        item.dump_id for item in brought
    }


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
    owner = by_id.get(_owner_table(entry, by_id) or -1)
    of_table = "" if owner is None else table_name(owner.namespace, owner.tag)
    missing = sorted({_describe_dependency(by_id[d], by_id) for d in _blockers(entry, chosen, by_id)})
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
