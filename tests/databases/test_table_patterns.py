"""exclude_table_data's patterns: matched against the manifest's table names, one syntax for every engine."""

from __future__ import annotations

import pytest

from lockstep.databases.table_patterns import check_table_pattern, references_to_emptied, select_tables

NAMES = ["cache_pages", "cache_users", "sessions", "audit.log", "audit.sessions", '"billing.2024".invoices']


def test_star_and_question_mark_never_cross_a_dot() -> None:
    """`*` is a PostgreSQL public table's name, `audit.*` every table of the schema audit."""
    assert select_tables(["cache_*"], NAMES).tables == ("cache_pages", "cache_users")
    assert select_tables(["*"], NAMES).tables == ("cache_pages", "cache_users", "sessions")
    assert select_tables(["audit.*"], NAMES).tables == ("audit.log", "audit.sessions")
    assert select_tables(["*.sessions"], NAMES).tables == ("audit.sessions",)
    assert select_tables(["cache_page?"], NAMES).tables == ("cache_pages",)
    assert select_tables(['"billing.2024".*'], NAMES).tables == ('"billing.2024".invoices',)


def test_matching_is_case_sensitive_and_unmatched_patterns_are_warned_about() -> None:
    selection = select_tables(["Sessions", "sessions", "jobs_*"], NAMES)
    assert selection.tables == ("sessions",)
    assert selection.unmatched == ("Sessions", "jobs_*")
    assert selection.warnings() == (
        "exclude_table_data: the pattern 'Sessions' matches no table; nothing was left out for it",
        "exclude_table_data: the pattern 'jobs_*' matches no table; nothing was left out for it",
    )


def test_a_partitioned_table_matched_stands_for_its_partitions_and_is_no_unmatched_pattern() -> None:
    """A partitioned table is not among the names (it holds no rows): matching it selects the
    partitions holding its rows, in the names' order; one without partitions selects nothing."""
    partitions = {"events": ["events_2025", "audit.events_2024"], "audit.empty": []}
    selection = select_tables(["events", "audit.empty"], [*NAMES, "audit.events_2024", "events_2025"], partitions)
    assert selection.tables == ("audit.events_2024", "events_2025")
    assert selection.unmatched == ()
    assert select_tables(["event?"], ["events_2025"], partitions).tables == ("events_2025",)


def test_a_kept_table_referring_to_an_emptied_one_is_named_with_the_fix() -> None:
    foreign_keys = [("orders", "customers"), ("customers", "customers"), ("sessions", "customers"), ("a", "b")]
    warnings = references_to_emptied(foreign_keys, {"customers", "sessions"}, "rows of {table} refer to {referenced}")
    assert warnings == (
        "exclude_table_data: table orders has a foreign key to customers, whose rows are left out: rows of orders "
        "refer to customers; leave out orders's rows too, or keep customers's",
    )


@pytest.mark.parametrize("engine", ["postgresql", "mysql", "sqlite"])
def test_plain_names_and_globs_are_valid_everywhere(engine: str) -> None:
    for pattern in ("sessions", "cache_*", "job?", "weird name"):
        check_table_pattern(pattern, engine)


def test_a_quoted_dot_is_part_of_a_postgresql_name() -> None:
    check_table_pattern('"billing.2024".invoices', "postgresql")
    with pytest.raises(ValueError, match="has a dot"):
        check_table_pattern("shop.sessions", "mysql")
