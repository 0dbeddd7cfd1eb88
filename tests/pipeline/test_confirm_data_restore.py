"""The one question every data restore asks (single-host and multi-host rollbacks)."""

from __future__ import annotations

import pytest

from lockstep.errors import UsageError
from lockstep.pipeline.rollback import confirm_data_restore


class Answering:
    """A reporter that answers every question with `answer` and remembers what it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str | None]] = []

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        self.asked.append((question, expected_answer))
        return self.answer


def test_yes_asks_nothing() -> None:
    reporter = Answering(False)
    confirm_data_restore(reporter, "production", yes=True)  # type: ignore[arg-type]
    assert reporter.asked == []


def test_production_wants_its_name_typed_and_other_environments_a_y() -> None:
    production, staging = Answering(True), Answering(True)
    confirm_data_restore(production, "production", yes=False)  # type: ignore[arg-type]
    confirm_data_restore(staging, "staging", yes=False)  # type: ignore[arg-type]
    assert production.asked == [("Restore the databases and lose those writes?", "production")]
    assert staging.asked == [("Restore the databases and lose those writes?", None)]


@pytest.mark.parametrize(("environment", "how"), [("production", "by typing production"), ("staging", "with y")])
def test_a_refusal_changes_nothing_and_says_how_to_confirm(environment: str, how: str) -> None:
    with pytest.raises(UsageError) as refused:
        confirm_data_restore(Answering(False), environment, yes=False)  # type: ignore[arg-type]
    assert "nothing was changed" in str(refused.value)
    assert f"confirm on a terminal {how}, or pass --yes (CI)" in refused.value.hint
