"""The orchestrator's side of an unwind's data step (pipeline/coordination.py): the primary
restores only while every other host holds its traffic (one not started holds nothing), and
the holds end only once the primary is done. The hosts are scripted stand-ins speaking the line protocol on the
pipes an SSH session would give (stdin, stdout, exit status); the real sessions are in
tests/deploy/test_multi_host.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

from lockstep.config.hosts_model import HostTarget
from lockstep.pipeline.coordination import barrier_line
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.multi_host import HostFanOut, HostRun
from tests.pipeline.test_steps import Collector

DEPLOY = "20261123_000000_abc"


class Lines:
    """An async line stream fed by the script; None ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while (line := await self.queue.get()) is not None:
            yield line


class ScriptedHost:
    """A host's lockstep process: what it prints, and how it answers the orchestrator's words."""

    def __init__(self, answer: Callable[[ScriptedHost, str], None] | None = None) -> None:
        self.stdout = Lines()
        self.stderr = Lines()
        self.stdin = SimpleNamespace(write=self._heard, write_eof=lambda: self.heard.append("EOF"))
        self.heard: list[str] = []
        self.exit_status: int | None = None
        self.answer = answer

    def say(self, barrier: str, **said: object) -> None:
        self.stdout.queue.put_nowait(barrier_line(barrier, DEPLOY, dict(said)) + "\n")

    def exit(self, status: int) -> None:
        self.exit_status = status
        self.stdout.queue.put_nowait(None)
        self.stderr.queue.put_nowait(None)

    def _heard(self, text: str) -> None:
        word = text.strip()
        self.heard.append(word)
        if self.answer is not None:
            self.answer(self, word)

    async def wait(self, check: bool = False) -> SimpleNamespace:
        return SimpleNamespace(exit_status=self.exit_status, exit_signal=None)  # as asyncssh


def _fan_out(hosts: list[ScriptedHost | None]) -> tuple[HostFanOut, list[HostRun], Collector]:
    """The orchestrator's machinery without a project: only what the data step uses (None: a
    host not started)."""
    fan_out = HostFanOut.__new__(HostFanOut)
    reporter = Collector()
    fan_out.reporter = reporter
    fan_out.loop = asyncio.new_event_loop()
    fan_out.data_kept = None
    fan_out.runs = []
    for index, host in enumerate(hosts):
        run = HostRun(HostTarget(f"web{index + 1}", "127.0.0.1", 22, None, "/srv/app"), primary=index == 0)
        run.process = host
        run.outcome = "running" if host is not None else "not started"
        fan_out.runs.append(run)
    return fan_out, fan_out.runs, reporter


def _run_data_step(fan_out: HostFanOut) -> None:
    async def step() -> None:
        for run in fan_out.runs:
            if run.process is not None:
                run.tasks = [fan_out.loop.create_task(fan_out._read_stdout(run))]
        await asyncio.wait_for(fan_out._coordinate_restore(OperationRecord.started_now(DEPLOY, "deploy", "test")), 10)

    try:
        fan_out.loop.run_until_complete(step())
    finally:
        for run in fan_out.runs:  # the hosts still holding end their sessions, as after _end_input
            if run.process is not None and run.process.exit_status is None:
                run.process.exit(0)
        fan_out.loop.run_until_complete(asyncio.gather(*(task for run in fan_out.runs for task in run.tasks)))
        fan_out.loop.close()


def _restores_then_exits(host: ScriptedHost, word: str) -> None:
    host.exit(3)  # "go" restores, "keep" does not: either way its unwind ends


def test_the_primary_restores_only_once_every_host_holds_and_the_holds_end_after() -> None:
    primary, second, third = ScriptedHost(_restores_then_exits), ScriptedHost(), ScriptedHost()
    fan_out, _, _ = _fan_out([primary, second, third])
    primary.say("restore", unwinding=True)
    second.say("held", unwinding=True, held=True, reason=None)

    # The third host holds only a moment later: until then the primary must not hear a word.
    def third_holds() -> None:
        assert primary.heard == []
        third.say("held", unwinding=True, held=True, reason=None)

    fan_out.loop.call_later(0.3, third_holds)
    _run_data_step(fan_out)
    assert primary.heard == ["go"]
    assert second.heard == third.heard == ["go"]  # released once the primary had ended
    assert fan_out.data_kept is None


def test_a_host_that_cannot_hold_keeps_the_migrated_data() -> None:
    primary, second = ScriptedHost(_restores_then_exits), ScriptedHost()
    fan_out, _, reporter = _fan_out([primary, second])
    primary.say("restore", unwinding=True)
    second.say("held", unwinding=True, held=False, reason="the agent did not answer")
    _run_data_step(fan_out)
    assert primary.heard == ["keep"]
    assert second.heard == ["go"]
    assert fan_out.data_kept is not None and "THE DATA WAS NOT RESTORED" in fan_out.data_kept
    assert "web2 (its traffic could not be held: the agent did not answer)" in fan_out.data_kept
    assert any(line.startswith("warn THE DATA WAS NOT RESTORED") for line in reporter.lines)


def test_a_host_that_ended_without_holding_keeps_the_migrated_data_too() -> None:
    primary, second = ScriptedHost(_restores_then_exits), ScriptedHost()
    fan_out, _, _ = _fan_out([primary, second])
    primary.say("restore", unwinding=True)
    second.exit(1)
    _run_data_step(fan_out)
    assert primary.heard == ["keep"]
    assert fan_out.data_kept is not None and "web2 (it ended without holding)" in fan_out.data_kept


def test_a_host_not_started_keeps_the_migrated_data() -> None:
    """The primary failed before its switch barrier: the other host was never started, so its
    release serves and its workers write; the primary was told to restore all the same."""
    primary = ScriptedHost(_restores_then_exits)
    fan_out, _, reporter = _fan_out([primary, None])
    primary.say("restore", unwinding=True)
    _run_data_step(fan_out)
    assert primary.heard == ["keep"]
    assert fan_out.data_kept is not None and "THE DATA WAS NOT RESTORED" in fan_out.data_kept
    assert "web2 (it was not started: its release serves and its workers run)" in fan_out.data_kept
    assert any(line.startswith("warn THE DATA WAS NOT RESTORED") for line in reporter.lines)


def test_the_holds_end_when_the_primary_restores_nothing() -> None:
    """Its data did not change, or it is gone: nothing to wait for."""
    primary, second = ScriptedHost(), ScriptedHost()
    fan_out, _, _ = _fan_out([primary, second])
    second.say("held", unwinding=True, held=True, reason=None)
    primary.exit(3)
    _run_data_step(fan_out)
    assert primary.heard == [] and second.heard == ["go"]
    assert fan_out.data_kept is None


def test_a_barrier_on_the_way_forward_is_not_the_data_step() -> None:
    """A rollback's primary waits at its restore barrier before its restore, not in an unwind:
    the data step leaves it alone (the abort reaches it), and waits for it to end."""
    primary, second = ScriptedHost(), ScriptedHost()
    fan_out, runs, _ = _fan_out([primary, second])
    primary.say("restore")
    second.say("held", unwinding=True, held=True, reason=None)
    fan_out.loop.call_later(0.3, lambda: primary.exit(3))
    _run_data_step(fan_out)
    assert primary.heard == [] and second.heard == ["go"]
    assert not fan_out._unwinding(runs[0]) or runs[0].exit_code == 3


def test_a_rollback_s_primary_puts_the_data_back_once_every_host_undid_even_one_not_holding() -> None:
    """A rollback's unwind: the primary waits at its restore barrier until every other host has
    undone its part (its older release stopped), then puts the data back whatever they said: the
    newer release serves again on every host that undid its part, and not on the older data."""
    primary, second = ScriptedHost(_restores_then_exits), ScriptedHost()
    fan_out, _, reporter = _fan_out([primary, second])
    fan_out.restore_needs_every_hold = False  # as MultiHostRollback
    primary.say("restore", unwinding=True)

    def second_undid() -> None:
        assert primary.heard == []  # not before the second host undid its part
        second.say("held", unwinding=True, held=False, reason="the agent did not answer")

    fan_out.loop.call_later(0.3, second_undid)
    _run_data_step(fan_out)
    assert primary.heard == ["go"] and second.heard == ["go"]
    assert fan_out.data_kept is None
    assert any("web1 puts the data back, though not every host confirmed" in line for line in reporter.lines)
