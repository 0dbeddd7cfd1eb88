"""Some tables of a pg_dump archive (postgresql_tables.py): the roles its grants name. The
restores themselves run against the real server in tests/cli/test_snapshot_restore_*tables_cli.py."""

from __future__ import annotations

from lockstep.databases.postgresql_archive import OFFSET_SET, SECTION_NONE, TocEntry
from lockstep.databases.postgresql_tables import acl_roles

# What pg_dump 15 wrote for: GRANT ... TO "pgtables ""giver""" WITH GRANT OPTION; that role
# granting on to pgtables_taker; REVOKE ALL ... FROM PUBLIC (not written: PUBLIC had nothing).
DELEGATED = (
    'GRANT SELECT ON TABLE public.audit TO "pgtables ""giver""" WITH GRANT OPTION;\n'
    'SET SESSION AUTHORIZATION "pgtables ""giver""";\n'
    "GRANT SELECT ON TABLE public.audit TO pgtables_taker;\n"
    "RESET SESSION AUTHORIZATION;\n"
)


def acl(definition: str) -> TocEntry:
    return TocEntry(1, False, "TABLE audit", "ACL", SECTION_NONE, definition, "", "public", "", 0, OFFSET_SET)


def test_the_roles_a_grant_names_are_its_grantees_and_grantors_quoted_or_not_public_aside() -> None:
    """A quoted name is unquoted ("" is one "), WITH GRANT OPTION is not part of it, the role a
    grant is made as (SET SESSION AUTHORIZATION) counts: the target server needs it too."""
    assert acl_roles(acl(DELEGATED)) == {'pgtables "giver"', "pgtables_taker"}
    revoked = "REVOKE ALL ON TABLE public.audit FROM PUBLIC;\nREVOKE ALL ON TABLE public.audit FROM app;\n"
    assert acl_roles(acl(revoked)) == {"app"}
    assert acl_roles(acl('GRANT UPDATE(note) ON TABLE public."to x" TO "PUBLIC";\n')) == {"PUBLIC"}
