"""The entries of a pg_dump archive that name roles the target server lacks (postgresql_roles.py),
on table-of-contents entries as pg_dump 15 writes them. The restores themselves run against the
real server in tests/cli/test_snapshot_restore_postgresql_roles_cli.py."""

from __future__ import annotations

import pytest

from lockstep.databases.postgresql_archive import OFFSET_SET, SECTION_NONE, SECTION_POST_DATA, ArchiveHead, TocEntry
from lockstep.databases.postgresql_roles import MissingPolicyRoles, leave_out, named_roles, policy_roles
from tests.databases.test_postgresql_tables import DELEGATED


def entry(
    dump_id: int, description: str, tag: str, definition: str, owner: str = "postgres", depends: tuple[int, ...] = ()
) -> TocEntry:
    section = SECTION_POST_DATA if description == "POLICY" else SECTION_NONE
    return TocEntry(
        dump_id, False, tag, description, section, definition, "", "public", "", 0, OFFSET_SET, owner, depends
    )


def head(*entries: TocEntry) -> ArchiveHead:
    return ArchiveHead(list(entries), end=0, int_size=4, offset_size=8)


def test_a_policys_roles_are_read_after_its_table_options_and_command_quoted_or_not() -> None:
    """pg_dump's CREATE POLICY: a quoted table name holding " TO " or a policy name holding one
    is not taken for the role list; no TO means PUBLIC (no role)."""
    quoted = entry(
        1,
        "POLICY",
        "x TO y p",
        'CREATE POLICY "p TO q" ON public."x TO y" AS RESTRICTIVE FOR SELECT TO "Some ""one""", app'
        " USING ((total > (10)::numeric));\n",
    )
    assert policy_roles(quoted) == ['Some "one"', "app"]
    public = entry(2, "POLICY", "orders own", "CREATE POLICY own ON public.orders USING ((owner = CURRENT_USER));\n")
    assert policy_roles(public) == []
    assert named_roles(head(quoted, public)) == {'Some "one"', "app"}


def test_default_privileges_name_the_role_they_belong_to_as_well_as_the_grantee() -> None:
    defaults = entry(
        1,
        "DEFAULT ACL",
        "DEFAULT PRIVILEGES FOR TABLES",
        'ALTER DEFAULT PRIVILEGES FOR ROLE "Owner" IN SCHEMA public GRANT SELECT ON TABLES  TO PUBLIC;\n',
        owner="Owner",
    )
    assert named_roles(head(defaults)) == {"Owner"}
    assert leave_out(head(defaults), frozenset({"Owner"})).left_out == [
        "default privileges for tables in schema public of role Owner (the target server has no role Owner:"
        " create it, then run ALTER DEFAULT PRIVILEGES by hand)"
    ]


def test_an_acl_entry_keeps_its_grants_to_other_roles_and_the_entries_after_it_run_in_order() -> None:
    """The entry is taken from pg_restore; its grants to roles the server has are run after it,
    and so is the column's entry after it (a REVOKE on the table would revoke the column's
    grants). A grant made as a missing role goes with its SET/RESET SESSION AUTHORIZATION."""
    before = entry(1, "ACL", "TABLE customers", "GRANT SELECT ON TABLE public.customers TO gone;\n")
    table = entry(2, "ACL", "TABLE audit", "REVOKE ALL ON TABLE public.audit FROM postgres;\n" + DELEGATED)
    column = entry(3, "ACL", "COLUMN audit.note", "GRANT UPDATE(note) ON TABLE public.audit TO kept;\n", depends=(2,))
    left = leave_out(head(table, column), frozenset({'pgtables "giver"'}))
    assert left.dump_ids == {2, 3}
    assert left.statements == [
        "REVOKE ALL ON TABLE public.audit FROM postgres;",
        "GRANT UPDATE(note) ON TABLE public.audit TO kept;",
    ]
    assert left.left_out == [
        'grants on table audit (the target server has no role pgtables "giver": create it, then grant by hand)'
    ]
    taker_gone = leave_out(head(before, table), frozenset({"pgtables_taker", "gone"}))
    assert taker_gone.dump_ids == {1, 2}
    assert taker_gone.statements == [
        "REVOKE ALL ON TABLE public.audit FROM postgres;\n"
        'GRANT SELECT ON TABLE public.audit TO "pgtables ""giver""" WITH GRANT OPTION;\n'
        'SET SESSION AUTHORIZATION "pgtables ""giver""";\n'
        "RESET SESSION AUTHORIZATION;"
    ]
    assert leave_out(head(table, column), frozenset()).dump_ids == frozenset()


def test_a_policy_for_missing_roles_alone_goes_with_its_comment_and_one_also_for_a_kept_role_is_refused() -> None:
    alone = entry(1, "POLICY", "orders reporting", "CREATE POLICY reporting ON public.orders TO gone USING (true);\n")
    comment = entry(
        2,
        "COMMENT",
        "POLICY reporting ON orders",
        "COMMENT ON POLICY reporting ON public.orders IS 'c';\n",
        depends=(1,),
    )
    left = leave_out(head(alone, comment), frozenset({"gone"}))
    assert left.dump_ids == {1, 2}
    assert len(left.left_out) == 1
    assert left.left_out[0].startswith(
        "row-level security policy reporting on table orders (it applies only to role gone"
    )
    shared = entry(
        3,
        "POLICY",
        "orders small",
        "CREATE POLICY small ON public.orders AS RESTRICTIVE TO gone, kept USING ((total < (5)::numeric));\n",
    )
    with pytest.raises(MissingPolicyRoles) as refused:
        leave_out(head(alone, comment, shared), frozenset({"gone"}))
    assert "policy small on table orders (roles gone, kept)" in refused.value.message
    assert 'CREATE ROLE "gone" NOLOGIN' in (refused.value.hint or "")
