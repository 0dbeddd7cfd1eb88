"""What the orchestrator says of a host whose lockstep died before the retire "go"
(pipeline/multi_host_undo.py): undone only when the `lockstep status` it ran there says the part
is over and the new release does not serve; else plainly that the host may still serve it. The
real sessions are in tests/deploy/test_multi_host.py."""

from __future__ import annotations

import asyncio
from typing import Any

from lockstep.config.hosts_model import HostTarget
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.multi_host import HostRun
from lockstep.pipeline.multi_host_undo import (
    KEPT,
    UNCONFIRMED,
    UNDONE,
    UndoCheck,
    confirm_host,
    confirmed_lines,
    judge_undo,
    unconfirmed_line,
    undo_uncertain,
)

DEPLOY = "20261124_000000_new"
OLD = "20261123_000000_old"


def _killed(name: str = "web2") -> HostRun:
    run = HostRun(HostTarget(name, "127.0.0.1", 22, None, "/srv/app"), primary=False)
    run.exit_code, run.exit_signal, run.outcome = -1, "SIGKILL", "failed"
    return run


def _status(outcome: str, release: str | None = OLD, reason: str = "") -> dict[str, Any]:
    return {
        "agent": {"running": True},
        "release": release,
        "last_operation": {"id": DEPLOY, "outcome": outcome, "reason": reason, "previous_release_id": OLD},
    }


def test_a_killed_host_is_undone_only_once_its_clean_up_says_so() -> None:
    assert judge_undo(_status("running", DEPLOY), "deploy", DEPLOY, DEPLOY) is None  # ask again
    undone = judge_undo(_status("interrupted", reason="...; switched back to release x"), "deploy", DEPLOY, DEPLOY)
    assert undone == UndoCheck(
        UNDONE, f"its part of this deploy is interrupted; it serves release {OLD} (its clean-up switched it back)", OLD
    )
    kept = judge_undo(_status("interrupted", DEPLOY), "deploy", DEPLOY, DEPLOY)
    assert kept is not None and kept.state == KEPT and f"IT STILL SERVES release {DEPLOY}" in kept.detail
    # Killed before it saved a record of its part: nothing of it switched.
    other = {"agent": {"running": True}, "release": OLD, "last_operation": {"id": OLD, "outcome": "succeeded"}}
    assert judge_undo(other, "deploy", DEPLOY, DEPLOY) == UndoCheck(
        UNDONE, f"it has no record of this deploy; it serves release {OLD}", OLD
    )


def test_a_host_not_reached_or_without_its_agent_is_not_confirmed() -> None:
    unreachable = judge_undo({"reachable": False, "error": "connection refused"}, "deploy", DEPLOY, DEPLOY)
    assert unreachable == UndoCheck(UNCONFIRMED, "could not reach it: connection refused")
    no_agent = {**_status("running", None), "agent": {"running": False, "detail": "no socket"}}
    judged = judge_undo(no_agent, "deploy", DEPLOY, DEPLOY)
    assert judged is not None and judged.state == UNCONFIRMED
    assert "its agent is not running (no socket), so nothing there undoes its part" in judged.detail
    run = _killed()
    run.undo = judged
    assert undo_uncertain(run) and confirmed_lines([run]) == []
    line = unconfirmed_line(run, "production", DEPLOY)
    assert f"HOST web2 MAY STILL SERVE release {DEPLOY}: run `lockstep status --env production` there" in line
    run.undo = judge_undo(_status("interrupted", DEPLOY), "deploy", DEPLOY, DEPLOY)
    assert f"`lockstep rollback --to {OLD} --env production` there" in unconfirmed_line(run, "production", DEPLOY)


def test_the_orchestrator_asks_until_the_part_is_over() -> None:
    answers = [_status("running", DEPLOY), _status("rolled-back")]
    asked: list[int] = []

    async def ask() -> dict[str, Any]:
        asked.append(1)
        return answers[len(asked) - 1]

    record = OperationRecord.started_now(DEPLOY, "deploy", "production")
    run = _killed()
    assert undo_uncertain(run)  # killed, not asked yet: not known
    asyncio.run(confirm_host(run, ask, record))
    assert len(asked) == 2 and run.undo is not None and run.undo.confirmed and not undo_uncertain(run)
    assert run.record_asked_again is not None and run.record_asked_again["outcome"] == "rolled-back"
    assert run.summary()["undo"] == {"state": UNDONE, "release": OLD, "detail": run.undo.detail}
    assert confirmed_lines([run]) == [f"web2's clean-up, run from here, confirmed its undo: {run.undo.detail}"]
