"""exclude_table_data's patterns: matched against the manifest's table names, one syntax for every engine."""

from __future__ import annotations

import pytest

from lockstep.databases.table_patterns import check_table_pattern, select_tables

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


@pytest.mark.parametrize("engine", ["postgresql", "mysql", "sqlite"])
def test_plain_names_and_globs_are_valid_everywhere(engine: str) -> None:
    for pattern in ("sessions", "cache_*", "job?", "weird name"):
        check_table_pattern(pattern, engine)


def test_a_quoted_dot_is_part_of_a_postgresql_name() -> None:
    check_table_pattern('"billing.2024".invoices', "postgresql")
    with pytest.raises(ValueError, match="has a dot"):
        check_table_pattern("shop.sessions", "mysql")
