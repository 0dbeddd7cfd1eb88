"""Finish the retire a multi-host deploy or rollback left unfinished on this host.

Past the retire "go" a host that fails keeps the release (multi_host_retire.py), and the slot it
left may still run its workers: two releases' workers side by side on the same data (after a
rollback with data, a release that expects the newer schema). Its record says which slot is
left (OperationRecord.retire_left), and the agent's watch for dead operations
(agent/abandoned_watch.py, every few seconds) and `lockstep status` finish it: once the
operation's process has ended and no other runs here, while the record's release still has the
traffic and the slot it left still holds the release it left, they stop what the retire step
would have stopped. Running it again changes nothing; the mark goes once done, or once a later
operation changed the slots. Both hold the history's clean-up lock while they do (two at once
would each act on the records as they read them).
"""

from __future__ import annotations

from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.errors import LockstepError
from lockstep.fault_injection import wait_point
from lockstep.pipeline.deploy import SlotControl, retire_other_slot
from lockstep.pipeline.history import History, OperationRecord, still_ending
from lockstep.pipeline.steps import Reporter


def retire_left(slot: str | None, release_id: str | None, whole_slot: bool = False) -> dict[str, Any] | None:
    """The mark of a slot left to retire, holding `release_id`; `whole_slot` after a rollback with
    data (its traffic component cannot stay warm either), else only what has no traffic."""
    if slot is None or release_id is None:
        return None
    return {"slot": slot, "release_id": release_id, "whole_slot": whole_slot}


def finish_unfinished_retires(
    context: EnvironmentContext, agent: SlotControl, history: History, reporter: Reporter
) -> int:
    """Finish every retire left unfinished here; how many were finished or found moot."""
    with history.clean_up_lock() as held:
        if not held:
            return 0  # another clean-up kept it this long: it finishes them
        return _finish_each(context, agent, history, reporter)


def _finish_each(context: EnvironmentContext, agent: SlotControl, history: History, reporter: Reporter) -> int:
    records = history.all()
    if any(record.retire_left for record in records):
        wait_point("retires read")  # tests: a second clean-up arriving now must not act on its own reading
    if any(record.outcome == "running" for record in records):
        return 0  # an operation is under way: the slots are its own until it ends
    finished = 0
    for record in records:
        if not record.retire_left or still_ending(record):
            continue
        try:
            done = _finish(context, agent, record, record.retire_left, reporter)
        except LockstepError as error:
            reporter.warn(f"could not finish the retire of {record.operation} {record.id}: {error}")
            continue
        record.retire_left = None
        if done:
            record.reason = f"{record.reason or ''}; its retire was finished afterwards ({done})".lstrip("; ")
        history.save(record)
        finished += 1
    return finished


def _finish(
    context: EnvironmentContext,
    agent: SlotControl,
    record: OperationRecord,
    left: dict[str, Any],
    reporter: Reporter,
) -> str | None:
    """Stop what the retire would have stopped in the slot left; what it stopped, or None when
    nothing ran there or a later operation changed the slots (nothing left to finish)."""
    status = agent.status()
    slots = status["slots"]
    slot = str(left["slot"])
    serving = status.get("active_slot") == record.slot and _release_in(slots, record.slot) == record.release_id
    if not serving or _release_in(slots, slot) != left["release_id"]:
        return None
    if not left.get("whole_slot"):
        stopped = retire_other_slot(context, agent, status, slot, reporter)
        return f"stopped {', '.join(stopped)} in slot {slot}" if stopped else None
    if not any(process.get("running") for process in slots[slot]["processes"]):
        return None
    agent.stop_slot(slot)
    reporter.info(f"stopped slot {slot}: its release expects the data the rollback replaced")
    return f"stopped slot {slot}"


def _release_in(slots: dict[str, Any], slot: str | None) -> str | None:
    release = (slots.get(slot or "") or {}).get("release") or {}
    return release.get("release_id")
