"""The deploy and rollback history in its real SQLite file."""

from __future__ import annotations

from pathlib import Path

from lockstep.pipeline.history import History, OperationRecord


def record(operation_id: str) -> OperationRecord:
    return OperationRecord(operation_id, "rollback", "production", 1.0, "ana", "web1", 42)


def test_two_rollbacks_in_one_second_keep_both_records(tmp_path: Path) -> None:
    """Rollback IDs have second precision and a rollback takes half a second: the second one
    replaced the first's record. A taken ID gets a suffix."""
    history = History(tmp_path / "history.db")
    first = history.unused_id("20261123_041500_rollback")
    history.save(record(first))
    second = history.unused_id("20261123_041500_rollback")
    history.save(record(second))
    third = history.unused_id("20261123_041500_rollback")
    assert (first, second, third) == (
        "20261123_041500_rollback",
        "20261123_041500_rollback_2",
        "20261123_041500_rollback_3",
    )
    assert {saved.id for saved in history.all()} == {first, second}
