"""Start again the workers an operation left stopped after a data restore.

A data restore stops the serving release's workers (pipeline/worker_pause.py). When starting
them again fails (the agent refuses, a worker exits as it starts, the agent is briefly
unreachable), the operation says so and goes on, and its record keeps `paused_workers`: nothing
tried again, and the release ran without its workers until the next deploy. So the agent's watch
(agent/abandoned_watch.py, every few seconds) and `lockstep status` try again, as they finish
unfinished retires: once the operation's process has ended and no other runs here, while the
release the workers belong to is still the active one. A try starts those that are not up (a
worker the agent restarts over and over, or gave up on, is started afresh), and the next passes
watch them for RESTART_SETTLE_SECONDS (pipeline/worker_pause.py): one that exits in that time
fails the try, as one that does not start. After a failed try the next one waits
(RETRY_FIRST_DELAY_SECONDS, doubling up to RETRY_LONGEST_DELAY_SECONDS): a worker that exits as
it starts is not started every few seconds. The mark goes once they stayed up, and the record's
reason says so; it goes at once, whatever the back-off, once a later operation changed the
slots (their release no longer serves: they are not to run).

The same retry starts the workers a killed operation's clean-up held stopped while the
coordinated (multi-host) deploy it was part of went on: another host may be restoring the shared
data until its orchestrator releases the environment's lock. Workers kept stopped on purpose (a
rollback killed or failed while they would write into data that is not theirs) stay stopped.
"""

from __future__ import annotations

import time
from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.errors import LockstepError
from lockstep.pipeline.coordination import orchestrator_still_holds
from lockstep.pipeline.history import History, OperationRecord, still_ending
from lockstep.pipeline.steps import Reporter
from lockstep.pipeline.worker_pause import (
    RESTART_SETTLE_SECONDS,
    StartWatcher,
    components_up,
    last_event_id,
    launches_not_running,
    start_launches,
    why_down,
    why_kept_stopped,
)

RETRY_FIRST_DELAY_SECONDS = 30.0
RETRY_LONGEST_DELAY_SECONDS = 600.0


def retry_delay(attempts: int) -> float:
    """How long after its `attempts`-th failed retry the next one waits."""
    return float(min(RETRY_LONGEST_DELAY_SECONDS, RETRY_FIRST_DELAY_SECONDS * 2 ** max(0, attempts - 1)))


def retry_paused_workers(context: EnvironmentContext, agent: StartWatcher, history: History, reporter: Reporter) -> int:
    """Try to start again the workers the finished operations left stopped; how many records changed."""
    with history.clean_up_lock() as held:
        if not held:
            return 0  # another clean-up kept it this long: it does this
        records = history.all()
        if any(record.outcome == "running" for record in records):
            return 0  # an operation is under way: the slots are its own until it ends
        changed = 0
        now = time.time()
        for record in records:
            paused = record.paused_workers
            if not paused or still_ending(record):
                continue
            if _retry(context, agent, record, paused, reporter, now):
                history.save(record)
                changed += 1
        return changed


def _retry(
    context: EnvironmentContext,
    agent: StartWatcher,
    record: OperationRecord,
    paused: dict[str, Any],
    reporter: Reporter,
    now: float,
) -> bool:
    """One pass for one record: a try (start what is not up), or a look at the last try's workers
    while they settle; whether its record changed."""
    slot, release_id = str(paused["slot"]), str(paused["release_id"])
    components = [str(name) for name in paused["components"]]
    named = ", ".join(components)
    try:
        status = agent.status()
        slot_status = status["slots"][slot]
        release = slot_status.get("release") or {}
        if status.get("active_slot") != slot or release.get("release_id") != release_id:
            record.paused_workers = None
            _note(
                record,
                f"the workers {named} it left stopped in slot {slot} were not started: a later operation "
                "changed the slots",
            )
            return True
        if why_kept_stopped(record) is not None:
            return False  # said when it stopped them, and `status` shows them stopped
        coordinated = paused.get("coordinated")
        under_way = orchestrator_still_holds(context, str(coordinated)) if coordinated else None
        if under_way is not None:
            if paused.get("waiting_for") == under_way:
                return False
            paused["waiting_for"] = under_way  # `status` says what they wait for
            return True
        settle_until = paused.get("settle_until")
        if settle_until is None:
            if float(paused.get("retry_at") or 0) > now:
                return False  # backing off after a failed try
            since = last_event_id(agent)
            launches = launches_not_running(release, components, components_up(slot_status))
            if launches:
                start_launches(agent, slot, launches, replace=True)
            # Not done yet: done once they stayed up (the next passes look).
            record.paused_workers = {
                **paused,
                "settle_since": since,
                "settle_until": now + RESTART_SETTLE_SECONDS,
                "started": bool(launches) or bool(paused.get("started")),
            }
            return True
        down = why_down(agent, slot, components, int(paused["settle_since"]))
        if down is None and float(settle_until) > now:
            return False
        if down is not None:
            raise LockstepError(down)
    except (LockstepError, KeyError) as error:
        attempts = int(paused.get("attempts") or 0) + 1
        delay = retry_delay(attempts)
        settled = {key: value for key, value in paused.items() if key not in ("settle_since", "settle_until")}
        record.paused_workers = {
            **settled,
            "restart_failed": str(error),
            "attempts": attempts,
            "retry_at": time.time() + delay,
        }
        reporter.warn(
            f"could not start again the workers {named} of slot {slot} that {record.operation} {record.id} stopped "
            f"for a data restore (try {attempts}): {error}; trying again in {delay:.0f} s"
        )
        return True
    record.paused_workers = None
    if not paused.get("started"):  # something else started them (a later deploy's unwind): nothing to say but that
        _note(record, f"its workers {named} run again")
        return True
    _note(record, f"its workers {named} were started again afterwards")
    reporter.warn(
        f"started again the workers {named} of slot {slot} (release {release_id}) that {record.operation} "
        f"{record.id} stopped for a data restore: they stayed up {RESTART_SETTLE_SECONDS:g} s"
    )
    return True


def _note(record: OperationRecord, note: str) -> None:
    record.reason = f"{record.reason or ''}; {note}".lstrip("; ")


def paused_workers_document(records: list[OperationRecord]) -> list[dict[str, Any]]:
    """For `status`: the workers finished operations left stopped, and why, or when they are tried again."""
    return [
        {
            "operation": record.operation,
            "id": record.id,
            **(record.paused_workers or {}),
            "kept_stopped": why_kept_stopped(record),
            "retry_every": f"{RETRY_FIRST_DELAY_SECONDS:.0f} s, doubling up to {RETRY_LONGEST_DELAY_SECONDS:.0f} s",
            "settle_seconds": f"{RESTART_SETTLE_SECONDS:g} s",
        }
        for record in records
        if record.paused_workers and record.outcome != "running"
    ]
