"""A PostgreSQL restore onto a server without the roles the snapshot's grants and policies name
(disaster recovery onto a new server): the real CLI in a child process and the real PostgreSQL
server on 127.0.0.1:5432. The other server is simulated by dropping the role after the snapshot
and restoring into another database of the same server (databases and roles named grants_...)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.test_snapshot_cli import Project
from tests.cli.test_snapshot_restore_postgresql_tables_cli import database, snapshot_of
from tests.cli.test_snapshot_restore_tables_cli import SERVER, drop, rows
from tests.pipeline.test_verify import require_postgresql, run_postgresql

# {gone} is dropped after the snapshot, {kept} stays. Grants to both on a table, a column, a
# sequence and the schema; default privileges granted to {gone}, and {gone}'s own; a policy for
# {gone} alone (with a comment), one for every role.
SHOP = """
CREATE TABLE orders (id serial PRIMARY KEY, owner text NOT NULL, total numeric NOT NULL, note text);
INSERT INTO orders (owner, total, note) SELECT 'owner ' || (g % 3), g, 'note ' || g FROM generate_series(1, 50) g;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_orders ON orders USING (owner = current_user);
CREATE POLICY reporting_sees_all ON orders AS RESTRICTIVE FOR SELECT TO "{gone}" USING (total > 10);
COMMENT ON POLICY reporting_sees_all ON orders IS 'reporting reads the big orders';
GRANT SELECT ON orders TO "{gone}", "{kept}";
GRANT UPDATE (note) ON orders TO "{gone}";
GRANT USAGE ON SEQUENCE orders_id_seq TO "{gone}";
GRANT USAGE ON SCHEMA public TO "{gone}";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{gone}";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{kept}";
ALTER DEFAULT PRIVILEGES FOR ROLE "{gone}" GRANT SELECT ON TABLES TO PUBLIC;
"""


@contextmanager
def roles(count: int) -> Iterator[list[str]]:
    """`count` roles named grants_... (one with a space and capitals, which need quoting),
    dropped afterwards with whatever they still own or are granted on this server."""
    require_postgresql()
    suffix = uuid.uuid4().hex[:8]
    names = [f"Grants reporting {suffix}", *(f"grants_app{number}_{suffix}" for number in range(1, count))]
    for name in names:
        run_postgresql(SERVER, f'CREATE ROLE "{name}"', database="postgres")
    try:
        yield names
    finally:
        for name in names:
            run_postgresql(SERVER, f'DROP ROLE IF EXISTS "{name}"', database="postgres")


def drop_role(url: str, name: str) -> None:
    """Drop the role: first its grants, policies and default privileges in the database at `url`."""
    run_postgresql(url, f'DROP OWNED BY "{name}"')
    run_postgresql(SERVER, f'DROP ROLE "{name}"', database="postgres")


def restore_to(project: Project, target: str, *more: str) -> dict[str, object]:
    result = project.ok("snapshot", "restore", "latest", "--database", "shop", "--to", target, "--json", *more)
    document: dict[str, object] = json.loads(result.out)["databases"][0]
    return document


def privileges(url: str, role: str) -> list[tuple[object, ...]]:
    literal = "'" + role.replace("'", "''") + "'"
    return run_postgresql(
        url,
        f"SELECT has_table_privilege({literal}, 'orders', 'SELECT'),"
        f" has_table_privilege({literal}, 'orders', 'INSERT')",
    )


@pytest.mark.parametrize("large_object", [False, True], ids=["streamed", "from-a-file"])
def test_a_whole_restore_onto_a_server_without_a_role_leaves_its_grants_and_policy_out_and_names_them(
    tmp_path: Path, large_object: bool
) -> None:
    """The snapshot grants to a role since dropped (on a table, a column, a sequence, the
    schema, in default privileges and as the role whose default privileges they are) and has a
    policy for it alone, with a comment. pg_restore failed on the first such GRANT and the
    restore stopped; now every row, the other role's grants and default privileges and the
    other policy come back, the restore's check passes, and the output and --json name each
    thing left out with what to do. verify --level restore (the same restore into a scratch
    database) passes too, with notes naming them. A dump with a large object (restored from a
    file by pg_restore --use-list) leaves out the same."""
    with roles(2) as (gone, kept), database(SHOP.format(gone=gone, kept=kept)) as url, database() as target:
        project = snapshot_of(
            tmp_path,
            url,
            f"SELECT lo_from_bytea(4242, 'memo'); GRANT SELECT ON LARGE OBJECT 4242 TO \"{kept}\""
            if large_object
            else "",
        )
        drop_role(url, gone)
        document = restore_to(project, target)
        missing = f"the target server has no role {gone}"
        assert document["verified"] is True
        assert document["left_out"] == [
            f"grants on schema public ({missing}: create it, then grant by hand)",
            f"grants on table orders ({missing}: create it, then grant by hand)",
            f"grants on column orders.note ({missing}: create it, then grant by hand)",
            f"grants on sequence orders_id_seq ({missing}: create it, then grant by hand)",
            f"row-level security policy reporting_sees_all on table orders (it applies only to role {gone}, which"
            " the target server lacks, so no role there sees other rows without it; create the role, then"
            " re-create the policy before giving the role access, or it sees other rows than in the snapshot)",
            f"default privileges for tables in schema public of role postgres ({missing}: create it, then run"
            " ALTER DEFAULT PRIVILEGES by hand)",
            f"default privileges for tables of role {gone} ({missing}: create it, then run ALTER DEFAULT"
            " PRIVILEGES by hand)",
        ]
        assert rows(target, "orders") == rows(url, "orders")
        assert privileges(target, kept) == [(True, False)]
        assert run_postgresql(target, "SELECT polname FROM pg_policy") == [("own_orders",)]
        if large_object:
            assert run_postgresql(target, "SELECT array_to_string(lomacl, ',') FROM pg_largeobject_metadata") == [
                (f"postgres=rw/postgres,{kept}=r/postgres",)
            ]
        assert run_postgresql(target, "SELECT relrowsecurity FROM pg_class WHERE relname = 'orders'") == [(True,)]
        # The kept role's default privileges came back: a new table is readable by it.
        run_postgresql(target, "CREATE TABLE later (id int)")
        literal = "'" + kept.replace("'", "''") + "'"
        assert run_postgresql(target, f"SELECT has_table_privilege({literal}, 'later', 'SELECT')") == [(True,)]
        shown = project.ok("snapshot", "restore", "latest", "--database", "shop", "--to", target, "--yes").out
        assert f"left out: grants on table orders ({missing}: create it, then grant by hand)" in shown
        verified = json.loads(project.ok("snapshot", "verify", "latest", "--level", "restore", "--json").out)
        assert verified["ok"] is True, verified
        assert (
            f"database shop: the test-restore left out grants on table orders ({missing}: create it, then grant"
            " by hand)" in verified["notes"]
        )


def test_a_table_restore_leaves_out_a_policy_for_a_role_the_target_server_lacks(tmp_path: Path) -> None:
    """--table orders: the policy for the dropped role alone is left out and named, as its
    grants are; the other policy comes back."""
    with roles(2) as (gone, kept), database(SHOP.format(gone=gone, kept=kept)) as url, database() as target:
        project = snapshot_of(tmp_path, url)
        drop_role(url, gone)
        document = restore_to(project, target, "--table", "orders")
        left_out = document["left_out"]
        assert isinstance(left_out, list)
        assert [sentence.partition(" (")[0] for sentence in left_out] == [
            "grants on table orders",
            "grants on column orders.note",
            "grants on sequence orders_id_seq",
            "row-level security policy reporting_sees_all on table orders",
        ]
        assert run_postgresql(target, "SELECT polname FROM pg_policy") == [("own_orders",)]
        assert privileges(target, kept) == [(True, False)]


def test_a_policy_for_a_missing_role_and_a_role_the_server_has_is_refused_before_anything_is_restored(
    tmp_path: Path,
) -> None:
    """A restrictive policy for two roles, one of them gone: left out, it would let the other
    role see rows the snapshot's policy hid. The restore exits 2 naming the policy, the role
    and the CREATE ROLE that fixes it; the target database is not even created. Once the role
    exists again, the same restore brings the policy back as it was. A restore over a database
    that holds data is refused before that database is emptied."""
    with roles(3) as (gone, kept, other), database(SHOP.format(gone=gone, kept=kept)) as url:
        run_postgresql(
            url, f'CREATE POLICY small_orders ON orders AS RESTRICTIVE TO "{gone}", "{other}" USING (total < 5)'
        )
        project = snapshot_of(tmp_path, url)
        drop_role(url, gone)
        name = f"grants_{uuid.uuid4().hex[:10]}"
        target = f"postgresql://postgres@127.0.0.1:5432/{name}"
        try:
            result = project.lockstep("snapshot", "restore", "latest", "--database", "shop", "--to", target)
            assert result.returncode == 2, result.err
            assert f"the target server has no role {gone}" in result.err
            assert f"policy small_orders on table orders (roles {gone}, {other})" in result.err
            assert f'CREATE ROLE "{gone}" NOLOGIN' in result.err
            assert run_postgresql(SERVER, f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == []
            # Over a database that holds data (with --yes, no pre-restore snapshot keeps it): refused
            # before it is emptied.
            with database("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)") as occupied:
                replaced = project.lockstep(
                    "snapshot", "restore", "latest", "--database", "shop", "--to", occupied, "--yes"
                )
                assert replaced.returncode == 2, replaced.err
                assert f"the target server has no role {gone}" in replaced.err
                assert run_postgresql(occupied, "SELECT id FROM kept") == [(1,)]
            run_postgresql(SERVER, f'CREATE ROLE "{gone}" NOLOGIN', database="postgres")
            document = restore_to(project, target)
            assert run_postgresql(target, "SELECT polname FROM pg_policy ORDER BY 1") == [
                ("own_orders",),
                ("reporting_sees_all",),
                ("small_orders",),
            ]
            assert document["left_out"] == []
        finally:
            drop(name)
