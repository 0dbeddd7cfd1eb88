"""`lockstep snapshot restore ID --database NAME --table T --to URL` for PostgreSQL: what else
belongs to a table comes back with it (triggers, row-level security and policies, grants,
comments, a partitioned table's partitions), with the real CLI in a child process and the real
PostgreSQL server on 127.0.0.1:5432 (databases and roles named pgtables_...)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.test_snapshot_cli import Project
from tests.cli.test_snapshot_restore_tables_cli import SERVER, drop, rows
from tests.cli.test_snapshot_verify_cli import make_project
from tests.pipeline.test_verify import require_postgresql, run_postgresql

# orders has a trigger (its function comes along), row-level security (enabled and forced), a
# policy, grants on the table and on a column, comments on the table, a column, the trigger and
# the policy, a rule and extended statistics; a second policy reads staff, which is not
# restored; audit's trigger stays behind.
SECURED = """
CREATE TABLE staff (name text PRIMARY KEY);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN NEW.note := coalesce(NEW.note, 'stamped'); RETURN NEW; END$$;
CREATE FUNCTION audit_stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER audit_stamp BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_stamp();
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner text NOT NULL DEFAULT current_user,
    total numeric NOT NULL,
    note text
);
CREATE TRIGGER orders_stamp BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION stamp();
COMMENT ON TRIGGER orders_stamp ON orders IS 'fills in the note';
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY own_orders ON orders USING (owner = current_user);
CREATE POLICY staff_orders ON orders USING (current_user IN (SELECT name FROM staff));
COMMENT ON POLICY own_orders ON orders IS 'each role sees its own';
COMMENT ON TABLE orders IS 'what was sold';
COMMENT ON COLUMN orders.note IS 'free text';
CREATE RULE orders_kept AS ON DELETE TO orders DO INSTEAD NOTHING;
CREATE STATISTICS orders_owner_total (dependencies) ON owner, total FROM orders;
GRANT SELECT ON orders TO "{reader}";
GRANT UPDATE (note) ON orders TO "{reader}";
INSERT INTO orders (total, note) VALUES (5, 'first'), (7, NULL);
"""
PARTITIONED = """
CREATE TABLE measurements (id serial, at date NOT NULL, value int NOT NULL, PRIMARY KEY (id, at, value))
    PARTITION BY RANGE (at);
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
    PARTITION BY LIST (value);
CREATE TABLE measurements_2025_small PARTITION OF measurements_2025 FOR VALUES IN (1, 2, 3);
CREATE TABLE measurements_2025_other PARTITION OF measurements_2025 DEFAULT;
CREATE INDEX measurements_at ON measurements (at);
CREATE TABLE other (id int);
INSERT INTO measurements (at, value) SELECT date '2024-04-01' + g, g % 7 FROM generate_series(0, 599) g;
INSERT INTO other VALUES (1);
"""
LEAVES = ["measurements_2024", "measurements_2025_other", "measurements_2025_small"]


@contextmanager
def database(statements: str = "") -> Iterator[str]:
    """The URL of a database named pgtables_..., holding `statements` if any (else not created),
    dropped afterwards."""
    require_postgresql()
    name = f"pgtables_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        if statements:
            run_postgresql(SERVER, f'CREATE DATABASE "{name}"', database="postgres")
            run_postgresql(url, statements)
        yield url
    finally:
        drop(name)


@contextmanager
def role() -> Iterator[str]:
    """A role whose name needs quoting (capitals, a space), dropped afterwards."""
    require_postgresql()
    name = f"Pgtables reader {uuid.uuid4().hex[:8]}"
    run_postgresql(SERVER, f'CREATE ROLE "{name}"', database="postgres")
    try:
        yield name
    finally:
        run_postgresql(SERVER, f'DROP ROLE IF EXISTS "{name}"', database="postgres")


def snapshot_of(tmp_path: Path, url: str, statements: str = "") -> Project:
    project = make_project(tmp_path)
    project.write_config({"shop": url})
    if statements:
        run_postgresql(url, statements)
    project.create("--allow-dirty", "-m", "shop")
    return project


def restore(project: Project, target: str, *tables: str) -> dict[str, object]:
    """`snapshot restore latest --database shop --table ... --to target --json`'s database."""
    chosen = [argument for table in tables for argument in ("--table", table)]
    result = project.ok("snapshot", "restore", "latest", "--database", "shop", *chosen, "--to", target, "--json")
    document: dict[str, object] = json.loads(result.out)["databases"][0]
    return document


@pytest.mark.parametrize("large_object", [False, True], ids=["streamed", "from-a-file"])
def test_triggers_row_level_security_policies_grants_and_comments_come_back_with_the_table(
    tmp_path: Path, large_object: bool
) -> None:
    """--table orders: its trigger (and the trigger's function), ENABLE and FORCE ROW LEVEL
    SECURITY, its policy, the grants on it and on its column, the comments on it, its column,
    its trigger and its policy, its rule and its extended statistics. The policy that reads
    staff (not restored) is left out and named; audit's trigger and function are not restored.
    A dump with a large object goes through a file and pg_restore --use-list: the same entries
    come back."""
    with role() as reader, database(SECURED.replace("{reader}", reader)) as url, database() as target:
        project = snapshot_of(tmp_path, url, "SELECT lo_from_bytea(0, 'memo')" if large_object else "")
        document = restore(project, target, "orders")
        assert document["left_out"] == ["policy orders staff_orders of orders (needs staff, not restored)"]
        assert rows(target, "orders") == rows(url, "orders")
        assert run_postgresql(target, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal") == [("orders_stamp",)]
        assert run_postgresql(target, "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace") == [
            ("stamp",)
        ]
        assert run_postgresql(
            target, "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'orders'::regclass"
        ) == [(True, True)]
        assert run_postgresql(target, "SELECT policyname, qual FROM pg_policies") == [
            ("own_orders", "(owner = CURRENT_USER)")
        ]
        assert run_postgresql(
            target,
            "SELECT has_table_privilege(%(r)s, 'orders', 'SELECT'), has_table_privilege(%(r)s, 'orders', 'INSERT'),"
            " has_column_privilege(%(r)s, 'orders', 'note', 'UPDATE'),"
            " has_column_privilege(%(r)s, 'orders', 'total', 'UPDATE')".replace("%(r)s", _literal(reader)),
        ) == [(True, False, True, False)]
        assert run_postgresql(
            target,
            "SELECT obj_description('orders'::regclass, 'pg_class'), col_description('orders'::regclass, 4),"
            " (SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'orders_stamp'),"
            " (SELECT obj_description(oid, 'pg_policy') FROM pg_policy WHERE polname = 'own_orders')",
        ) == [("what was sold", "free text", "fills in the note", "each role sees its own")]
        assert run_postgresql(target, "SELECT rulename FROM pg_rules WHERE schemaname = 'public'") == [("orders_kept",)]
        assert run_postgresql(target, "SELECT stxname FROM pg_statistic_ext") == [("orders_owner_total",)]
        # The trigger fires, and the identity sequence carries on from the snapshot's value.
        assert run_postgresql(target, "INSERT INTO orders (total) VALUES (9) RETURNING id, note") == [(3, "stamped")]


def test_grants_to_a_role_the_target_server_lacks_are_left_out_and_named(tmp_path: Path) -> None:
    """The snapshot grants on orders to a role since dropped: pg_restore would fail on those
    GRANTs (and, with --exit-on-error, stop); the table comes back with everything else, and
    the grants are named as left out, with the role to create."""
    with role() as reader, database(SECURED.replace("{reader}", reader)) as url, database() as target:
        project = snapshot_of(tmp_path, url)
        run_postgresql(url, f'REVOKE ALL ON orders FROM "{reader}"')
        run_postgresql(SERVER, f'DROP ROLE "{reader}"', database="postgres")
        document = restore(project, target, "orders")
        missing = f"the target server has no role {reader}: create it, then grant by hand"
        assert document["left_out"] == [
            f"grants on table orders ({missing})",
            f"grants on column orders.note ({missing})",
            "policy orders staff_orders of orders (needs staff, not restored)",
        ]
        assert rows(target, "orders") == rows(url, "orders")
        assert run_postgresql(target, "SELECT policyname FROM pg_policies") == [("own_orders",)]
        assert run_postgresql(target, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal") == [("orders_stamp",)]


def test_a_partitioned_table_comes_back_with_its_partitions_at_every_level(tmp_path: Path) -> None:
    """--table measurements: the partitioned table, its partitions (one of them partitioned in
    turn) attached as they were, each leaf with its rows, the index and primary key on every
    partition, the serial column's sequence at its value; `other` is not restored. The check
    covers the three leaves (the manifest records those, not the partitioned tables)."""
    with database(PARTITIONED) as url, database() as target:
        project = snapshot_of(tmp_path, url)
        document = restore(project, target, "public.measurements")
        assert (document["tables"], document["rows"], document["left_out"]) == (3, 600, [])
        assert run_postgresql(
            target,
            "SELECT c.relname, p.relname FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
            " LEFT JOIN pg_class p ON p.oid = i.inhparent WHERE c.relkind IN ('r', 'p') AND c.relnamespace ="
            " 'public'::regnamespace ORDER BY 1",
        ) == [
            ("measurements", None),
            ("measurements_2024", "measurements"),
            ("measurements_2025", "measurements"),
            ("measurements_2025_other", "measurements_2025"),
            ("measurements_2025_small", "measurements_2025"),
        ]
        for leaf in LEAVES:
            assert rows(target, leaf) == rows(url, leaf)
        indexes = (
            "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass"
            " AND EXISTS (SELECT FROM pg_inherits WHERE inhrelid = indexrelid)"
        )
        for leaf in LEAVES:  # the index and the key of each leaf hang under its parent's
            assert run_postgresql(target, indexes.replace("%s", _literal(leaf))) == [(2,)]
        inserted = (
            "INSERT INTO measurements (at, value) VALUES ('2025-03-01', 2) RETURNING tableoid::regclass::text, id"
        )
        assert run_postgresql(target, inserted) == [("measurements_2025_small", 601)]


@pytest.mark.parametrize("partition", ["measurements_2025_small", "measurements_2025"])
def test_a_partition_alone_is_refused_with_exit_13_naming_its_partitioned_table(tmp_path: Path, partition: str) -> None:
    """--table measurements_2025_small (a leaf) or measurements_2025 (itself partitioned),
    without measurements: exit 13, saying to restore measurements, and the target is not
    created. Asked for with measurements, a partition is no error: it comes with it."""
    with database(PARTITIONED) as url, database() as target:
        project = snapshot_of(tmp_path, url)
        refused = project.lockstep(
            "snapshot", "restore", "latest", "--database", "shop", "--table", partition, "--to", target
        )
        assert refused.returncode == 13, refused.err
        assert f"table {partition} is a partition of measurements" in refused.err
        assert "--table measurements" in refused.err
        assert run_postgresql(SERVER, f"SELECT 1 FROM pg_database WHERE datname = {_literal(target)}") == []
        document = restore(project, target, partition, "measurements")
        assert (document["tables"], document["rows"]) == (3, 600)


def _literal(text: str) -> str:
    """`text` (a URL's database name, or a name) as an SQL string literal."""
    name = text.rsplit("/", 1)[1] if text.startswith("postgresql://") else text
    return "'" + name.replace("'", "''") + "'"


def test_a_table_that_inherits_from_one_not_asked_for_is_refused_with_exit_13(tmp_path: Path) -> None:
    """derived INHERITS (base): --table derived alone would fail half-way in pg_restore (its
    CREATE TABLE names base); it exits 13 saying to add --table base, before the target is
    created. With both, both come back with their own rows."""
    inheritance = """
    CREATE TABLE base (id int PRIMARY KEY);
    CREATE TABLE derived (extra text) INHERITS (base);
    INSERT INTO base VALUES (1), (2);
    INSERT INTO derived VALUES (3, 'three');
    """
    with database(inheritance) as url, database() as target:
        project = snapshot_of(tmp_path, url)
        refused = project.lockstep(
            "snapshot", "restore", "latest", "--database", "shop", "--table", "derived", "--to", target
        )
        assert refused.returncode == 13, refused.err
        assert "table derived cannot be restored without base" in refused.err and "--table base" in refused.err
        assert run_postgresql(SERVER, f"SELECT 1 FROM pg_database WHERE datname = {_literal(target)}") == []
        document = restore(project, target, "derived", "base")
        assert (document["tables"], document["rows"], document["left_out"]) == (2, 3, [])
        assert run_postgresql(target, "SELECT id FROM ONLY base ORDER BY 1") == [(1,), (2,)]
        assert rows(target, "derived") == [(3, "three")]
