"""The host's side of a multi-host deploy: its barriers pass on "go" only."""

from __future__ import annotations

import io
import json
import re

import pytest

from lockstep.pipeline.coordination import (
    OrchestratorSaidAbort,
    parse_barrier,
    parse_barrier_document,
    wait_at_barrier,
    wait_for_word,
)


def test_go_passes_and_the_barrier_is_announced() -> None:
    output = io.StringIO()
    wait_at_barrier("switch", "20261123_1", output, io.StringIO("go\n"))
    line = output.getvalue()
    assert json.loads(line) == {"lockstep_barrier": "switch", "deploy_id": "20261123_1"}
    assert parse_barrier(line) == "switch"
    assert parse_barrier('{"id": "x"}') is None


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("abort\n", "said abort at the retire barrier: another host failed"),
        ("", "lost the orchestrator at the retire barrier (its connection closed)"),
        ("GO-ish\n", "said GO-ish"),
    ],
)
def test_anything_but_go_aborts(answer: str, message: str) -> None:
    """End of input is what a dropped SSH connection or a killed orchestrator looks like."""
    with pytest.raises(OrchestratorSaidAbort, match=re.escape(message)):
        wait_at_barrier("retire", "20261123_1", io.StringIO(), io.StringIO(answer))


def test_a_barrier_line_carries_what_the_host_says() -> None:
    output = io.StringIO()
    wait_at_barrier("switch", "20261123_1", output, io.StringIO("go\n"), said={"restores_data": True})
    document = parse_barrier_document(output.getvalue())
    assert document == {"lockstep_barrier": "switch", "deploy_id": "20261123_1", "restores_data": True}
    assert parse_barrier_document('{"lockstep_barrier": ""}') is None


@pytest.mark.parametrize(
    ("answers", "word"),
    [
        ("go\n", "go"),
        ("keep\n", "keep"),
        # A host that failed on its own: the orchestrator's abort crossed its barrier line.
        ("abort\ngo\n", "go"),
        ("abort\n", None),  # then its input ended: the orchestrator is gone
        ("", None),
    ],
)
def test_an_unwind_s_barrier_returns_the_word_and_reads_past_the_abort(answers: str, word: str | None) -> None:
    output = io.StringIO()
    assert wait_for_word("held", "20261123_1", {"unwinding": True, "held": True}, output, io.StringIO(answers)) == word
    assert json.loads(output.getvalue())["held"] is True


def test_an_unwind_s_barrier_does_not_raise_when_the_orchestrator_is_gone() -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("the connection is gone")

    assert wait_for_word("restore", "20261123_1", None, Closed(), io.StringIO("go\n")) is None
