"""Exits of a new release's processes from its health gate on: before the switch, and in the watch.

The agent restarts a process that exits, so a release that passed its health gate and then
crashed may run again by the time anyone looks, or may be dead at the switch. The watch counted
exits only from its own start, after the switch: one in between went unseen, and traffic was
switched to a dead release. Counting from the health gate closes that gap; the check before the
switch also refuses a release whose processes are not running at that moment.
"""

from __future__ import annotations

from typing import Any, Protocol

from lockstep.errors import UsageError
from lockstep.pipeline.steps import Reporter

# The step that checks, right before the switch, that the new release still runs.
PRE_SWITCH_CHECK_STEP = "pre-switch check"
# When the exits counted before the switch happened. Not "after passing its health gate": the
# gate checks one component after the other, so one may exit before its own gate passed.
GATE_WINDOW = "since its health gate began"


class EventSource(Protocol):
    """What counting exits needs of the agent."""

    def status(self) -> dict[str, Any]: ...

    def events(self, since_id: int) -> list[dict[str, Any]]: ...


class SlotExits:
    """Counts the agent's `exited` events of a slot's processes since a given event, and fails
    on a crash loop or on more than `limit` exits of one component (deploy.watch_max_exits).

    Only `exited` events count, which the agent records for processes that died under it;
    processes lockstep stops (a retire, a stop) leave supervision first and record none."""

    def __init__(self, agent: EventSource, slot: str, limit: int, since: int | None = None) -> None:
        self.agent = agent
        self.slot = slot
        self.limit = limit
        self.since = int(agent.status()["last_event_id"]) if since is None else since
        self.exits: dict[str, int] = {}

    def check(self, reporter: Reporter, window: str) -> None:
        """Count the exits since the last check; `window` says when they happened, for messages
        ("in the watch window")."""
        for event in self.agent.events(self.since):
            self.since = max(self.since, int(event["id"]))
            if not event["name"].endswith(f"@{self.slot}") or event["kind"] not in ("crash-loop", "exited"):
                continue
            component = event["name"].split("@")[0]
            if event["kind"] == "crash-loop":
                raise UsageError(f"{component} is crash-looping {window}: {event['detail']}")
            self.exits[component] = self.exits.get(component, 0) + 1
            said = f"{component} exited {self.exits[component]} time(s) {window} (limit {self.limit})"
            if self.exits[component] > self.limit:
                raise UsageError(f"{said}: {exit_summary(event['detail'])}")
            reporter.warn(f"{said}: {exit_summary(event['detail'])}")

    @property
    def total(self) -> int:
        return sum(self.exits.values())


def check_before_switch(
    agent: EventSource,
    slot: str,
    components: list[str],
    exits: SlotExits,
    reporter: Reporter,
    window: str = GATE_WINDOW,
) -> str:
    """Right before traffic moves to `slot`: every component runs (not crash-looped), and no
    more exits since the health gate (or what `window` says) than the watch allows. Raises
    UsageError naming the one that does not, so the deploy is rolled back before the switch."""
    exits.check(reporter, window)
    processes = {str(process["component"]): process for process in agent.status()["slots"][slot]["processes"]}
    for component in components:
        process = processes.get(component)
        if process is None or not process["running"] or process["crash_looped"]:
            state = "crash-looped" if process is not None and process["crash_looped"] else "not running"
            log = process.get("log") if process is not None else None
            raise UsageError(
                f"{component} in slot {slot} is {state} at the {PRE_SWITCH_CHECK_STEP}: the slot was not switched to",
                f"its log says why: {log}" if log else "`lockstep status` shows its processes",
            )
    exited = f"; {exits.total} exit(s) within the limit of {exits.limit}" if exits.total else ""
    return f"{len(components)} running{exited}"


def exit_summary(detail: str) -> str:
    """An agent `exited` event in one line: how it exited and the last line of its log (the
    event's "restarting in N s" is stale by the time a deploy fails on it)."""
    first, _, tail = detail.partition("; last lines of ")
    summary = first.split("; ")[0]
    log, _, lines = tail.partition(":\n")
    last = next((line.strip() for line in reversed(lines.splitlines()) if line.strip()), "")
    return f"{summary}; the last line of {log}: {last}" if last else summary
