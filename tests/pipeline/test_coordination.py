"""The host's side of a multi-host deploy: its barriers pass on "go" only."""

from __future__ import annotations

import io
import json
import re

import pytest

from lockstep.pipeline.coordination import OrchestratorSaidAbort, parse_barrier, wait_at_barrier


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
