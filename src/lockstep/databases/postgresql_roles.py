"""The entries of a custom-format archive that name roles the target server lacks.

A restore onto another server (disaster recovery, `--to` a new server, a test-restore after a
role was dropped) meets grants to roles that server does not have: `GRANT SELECT ON orders TO
reporting` fails, and lockstep's restores stop at the first error, so the whole restore failed
on one grant. Such entries are left out, and named with what to do, and the rest is restored:

- grants (ACL entries: on tables, columns, sequences, schemas, functions, large objects...) and
  default privileges (`ALTER DEFAULT PRIVILEGES [FOR ROLE r] ... TO role`) that name a missing
  role, as grantee, grantor or the role whose defaults they are;
- a row-level security policy whose roles (`CREATE POLICY ... TO r1, r2`) are all missing, with
  its comment: on the target it would apply to no role at all, so leaving it out changes what
  no existing role sees. Once the role is created, though, the policy is missing for it (a
  permissive one lets it see fewer rows, a restrictive one more), so the sentence says to
  re-create the policy before the role is given access.

A policy naming missing roles and roles the target has is refused instead (MissingPolicyRoles):
leaving it out would change what the existing roles see now (more rows, for a restrictive
policy), and narrowing it to them would restore a policy other than the snapshot's. Creating
the missing roles first (`CREATE ROLE ... NOLOGIN`) restores it as it was.

Owners are not handled here: without every owning role (or without superuser) a restore runs
pg_restore with --no-owner (see postgresql._can_keep_owners), so no `ALTER ... OWNER TO` names
a missing role.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lockstep.databases.postgresql_archive import ArchiveHead, TocEntry
from lockstep.databases.postgresql_tables import acl_statement_roles, grants_left_out
from lockstep.errors import UsageError

# An identifier as pg_dump writes it (fmtId, quote_ident): in double quotes, "" for a quote
# inside, or bare.
_IDENTIFIER = r'(?:"(?:[^"]|"")*"|[^\s",;()]+)'
# `ALTER DEFAULT PRIVILEGES FOR ROLE owner ...`: the role whose defaults these are.
_FOR_ROLE = re.compile(rf"^ALTER DEFAULT PRIVILEGES FOR ROLE ({_IDENTIFIER}) ", re.M)
# pg_dump's dumpPolicy: CREATE POLICY name ON schema.table [AS RESTRICTIVE] [FOR cmd] [TO roles]
# (no TO: the policy applies to PUBLIC).
_POLICY_ROLES = re.compile(
    rf"^CREATE POLICY {_IDENTIFIER} ON {_IDENTIFIER}\.{_IDENTIFIER}(?: AS RESTRICTIVE)?"
    rf"(?: FOR (?:SELECT|INSERT|UPDATE|DELETE))? TO ({_IDENTIFIER}(?:, {_IDENTIFIER})*)"
)
_GRANTS = frozenset({"ACL", "DEFAULT ACL"})
# What depends on a policy and fails without it.
_ABOUT_AN_OBJECT = frozenset({"COMMENT", "SECURITY LABEL"})


class MissingPolicyRoles(UsageError):
    """A policy names roles the target server lacks alongside roles it has (see the module)."""


@dataclass(frozen=True)
class RolesLeftOut:
    """What pg_restore is not to restore (dump IDs), one sentence each for the user on what was
    left out (in table-of-contents order), and the grants to run once pg_restore is done.

    An ACL entry holds every grant on its object, one statement each (`GRANT SELECT ON orders TO
    reporting; GRANT SELECT ON orders TO app;`): one naming a missing role is taken out of
    pg_restore whole, and its other statements are run in `statements`. So are the ACL entries
    after it, in the order pg_restore would have run them: a REVOKE on a table also revokes its
    columns' grants, so a column's grants must come after the table's."""

    dump_ids: frozenset[int] = frozenset()
    left_out: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)


def entry_roles(entry: TocEntry) -> set[str]:
    """The roles a grant, default privileges or policy entry names; empty for other entries."""
    if entry.description in _GRANTS:
        return _statement_roles(entry.definition)
    if entry.description == "POLICY":
        return set(policy_roles(entry))
    return set()


def policy_roles(entry: TocEntry) -> list[str]:
    """The roles a POLICY entry applies to ([] for PUBLIC)."""
    found = _POLICY_ROLES.match(entry.definition.lstrip())
    if found is None:
        return []
    return [_unquoted(role) for role in re.findall(_IDENTIFIER, found[1])]


def named_roles(head: ArchiveHead, within: Iterable[int] | None = None) -> set[str]:
    """Every role the archive's grants, default privileges and policies name (of the entries
    `within`, when given)."""
    wanted = None if within is None else set(within)
    return {role for entry in head.entries if wanted is None or entry.dump_id in wanted for role in entry_roles(entry)}


def leave_out(head: ArchiveHead, absent: frozenset[str], within: Iterable[int] | None = None) -> RolesLeftOut:
    """What to leave out of a restore of the entries `within` (all when None) onto a server
    without the roles `absent`. Raises MissingPolicyRoles for a policy that names some of them
    and roles the server has, before anything is restored."""
    if not absent:
        return RolesLeftOut()
    wanted = None if within is None else set(within)
    entries = [entry for entry in head.entries if wanted is None or entry.dump_id in wanted]
    refused = [entry for entry in entries if entry.description == "POLICY" and _partly_absent(entry, absent)]
    if refused:
        raise _refusal(refused, absent)
    taken: set[int] = set()
    sentences: list[str] = []
    statements: list[str] = []
    taking_grants = False  # from the first grant entry naming a missing role on
    for entry in entries:
        missing = sorted(entry_roles(entry) & absent)
        if entry.description in _GRANTS and (missing or taking_grants):
            taking_grants = True
            taken.add(entry.dump_id)
            if kept := _kept_statements(entry.definition, absent):
                statements.append(kept)
            if missing:
                sentences.append(_grants_sentence(entry, missing))
        elif missing and entry.description == "POLICY":
            taken.add(entry.dump_id)
            sentences.append(_policy_sentence(entry, missing))
    policies = {entry.dump_id for entry in entries if entry.dump_id in taken and entry.description == "POLICY"}
    for entry in entries:  # a policy's comment fails without the policy: it goes with it
        if entry.description in _ABOUT_AN_OBJECT and policies.intersection(entry.dependencies):
            taken.add(entry.dump_id)
    return RolesLeftOut(frozenset(taken), sentences, statements)


def _statement_roles(statements: str) -> set[str]:
    """The roles grant or default privileges statements name: as grantee, grantor, or the role
    whose default privileges they are (`ALTER DEFAULT PRIVILEGES FOR ROLE r`)."""
    return acl_statement_roles(statements) | {_unquoted(role) for role in _FOR_ROLE.findall(statements)}


def _kept_statements(definition: str, absent: frozenset[str]) -> str:
    """An ACL entry's statements without those naming a role in `absent`. pg_dump writes one
    statement a line, and a grant made by another role than the owner between `SET SESSION
    AUTHORIZATION grantor;` and `RESET SESSION AUTHORIZATION;`: without the grantor, that
    block goes."""
    kept: list[str] = []
    skipping = False
    for line in definition.split("\n"):  # kept as written: a quoted name may hold spaces
        statement = line.strip()
        if not statement:
            continue
        if statement == "RESET SESSION AUTHORIZATION;" and skipping:
            skipping = False
            continue
        if skipping or _statement_roles(statement + "\n") & absent:
            skipping = skipping or statement.startswith("SET SESSION AUTHORIZATION ")
            continue
        kept.append(line)
    return "\n".join(kept)


def _partly_absent(entry: TocEntry, absent: frozenset[str]) -> bool:
    roles = set(policy_roles(entry))
    return bool(roles & absent) and bool(roles - absent)


def _unquoted(role: str) -> str:
    return role[1:-1].replace('""', '"') if role.startswith('"') else role


def _quoted(role: str) -> str:
    return '"' + role.replace('"', '""') + '"'


def _policy_names(entry: TocEntry) -> tuple[str, str]:
    """A POLICY entry's table (schema-qualified outside public) and policy name, from its tag
    (`table policy`; neither part is quoted there, so a space in the table's name is read as
    well as it can be: the last word is the policy)."""
    table, _, policy = entry.tag.rpartition(" ")
    shown = table if entry.namespace in ("", "public") else f"{entry.namespace}.{table}"
    return shown, policy


def _grants_sentence(entry: TocEntry, missing: list[str]) -> str:
    roles = ", ".join(missing)
    if entry.description == "DEFAULT ACL":
        kind = entry.tag.removeprefix("DEFAULT PRIVILEGES FOR ").lower()
        schema = f" in schema {entry.namespace}" if entry.namespace else ""
        return (
            f"default privileges for {kind}{schema} of role {entry.owner} (the target server has no role"
            f" {roles}: create it, then run ALTER DEFAULT PRIVILEGES by hand)"
        )
    return grants_left_out(entry, missing)


def _policy_sentence(entry: TocEntry, missing: list[str]) -> str:
    table, policy = _policy_names(entry)
    roles = f"{'role' if len(missing) == 1 else 'roles'} {', '.join(missing)}"
    return (
        f"row-level security policy {policy} on table {table} (it applies only to {roles}, which the target"
        " server lacks, so no role there sees other rows without it; create the role, then re-create the policy"
        " before giving the role access, or it sees other rows than in the snapshot)"
    )


def _refusal(policies: list[TocEntry], absent: frozenset[str]) -> MissingPolicyRoles:
    described = []
    missing: set[str] = set()
    for entry in policies:
        table, policy = _policy_names(entry)
        roles = policy_roles(entry)
        missing |= set(roles) & absent
        described.append(f"policy {policy} on table {table} (roles {', '.join(roles)})")
    names = sorted(missing)
    create = "; ".join(f"CREATE ROLE {_quoted(role)} NOLOGIN" for role in names)
    return MissingPolicyRoles(
        f"the target server has no role {', '.join(names)}, which row-level security "
        f"{'policy' if len(described) == 1 else 'policies'} {'; '.join(described)} also "
        "applies to: restoring without the policy would change which rows the other roles see",
        f"create the missing roles on the target server ({create}), then restore again; nothing was restored",
    )
