"""The step runner: undo actions run newest first, keep going when one fails, and say so."""

from __future__ import annotations

import pytest

from lockstep.errors import UsageError
from lockstep.exit_codes import ExitCode
from lockstep.pipeline.steps import StepFailed, StepRunner


class Collector:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def step_started(self, step: str, detail: str) -> None:
        self.lines.append(f"start {step}")

    def step_finished(self, step: str, seconds: float, detail: str) -> None:
        self.lines.append(f"ok {step}")

    def step_failed(self, step: str, seconds: float, reason: str) -> None:
        self.lines.append(f"failed {step}: {reason}")

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"warn {message}")

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        return False


def test_a_failed_step_keeps_its_exit_code_and_undo_runs_in_reverse() -> None:
    """Undo order is the reverse of the steps; a usage error stays a usage error."""
    reporter = Collector()
    runner = StepRunner(reporter)
    undone: list[str] = []
    runner.run("one", "", lambda: runner.on_undo("one", lambda: undone.append("one")))
    runner.run("two", "", lambda: runner.on_undo("two", lambda: undone.append("two")))

    def fail() -> None:
        raise UsageError("smoke tests failed")

    with pytest.raises(StepFailed) as raised:
        runner.run("three", "", fail)
    assert raised.value.step == "three" and raised.value.exit_code == ExitCode.USAGE
    assert runner.unwind()
    assert undone == ["two", "one"]
    assert [record.outcome for record in runner.records] == ["ok", "ok", "failed", "undone", "undone"]


def test_unwinding_continues_past_a_failing_undo_and_reports_it() -> None:
    """One broken undo must not leave the others undone."""
    runner = StepRunner(Collector())
    undone: list[str] = []

    def broken() -> None:
        raise RuntimeError("agent went away")

    runner.on_undo("first", lambda: undone.append("first"))
    runner.on_undo("second", broken)
    runner.on_undo("third", lambda: undone.append("third"))
    assert not runner.unwind()
    assert undone == ["third", "first"]
    assert any(record.outcome == "undo-failed" and "agent went away" in record.detail for record in runner.records)


def test_forget_undo_drops_an_undo_that_no_longer_applies() -> None:
    """After the old slot is retired on purpose, switching back is no longer an undo."""
    runner = StepRunner(Collector())
    undone: list[str] = []
    runner.on_undo("switch", lambda: undone.append("switch"))
    runner.on_undo("start", lambda: undone.append("start"))
    runner.forget_undo("switch")
    runner.unwind()
    assert undone == ["start"]


def test_a_step_inside_another_ending_leaves_the_outer_one_as_the_running_step() -> None:
    """A rollback's pre-switch check runs inside its code step: once the check ended, a record
    saved then (a process killed then says where it was) names the code step as running, not
    the check."""
    runner = StepRunner(Collector())
    saved: list[list[dict[str, object]]] = []
    runner.on_started = lambda step, detail: saved.append(runner.progress(step, detail))
    runner.run("code", "release 1", lambda: runner.run("pre-switch check", "slot blue", lambda: None))
    running = [[item["step"] for item in steps if item["outcome"] == "running"] for steps in saved]
    assert running == [["code"], ["pre-switch check"], ["code"]]
    assert [item["step"] for item in saved[-1]] == ["pre-switch check", "code"]
