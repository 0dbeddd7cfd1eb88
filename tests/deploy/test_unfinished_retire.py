"""A retire that a multi-host deploy or rollback left unfinished on a host past its retire "go"
(pipeline/unfinished_retire.py), finished by the host itself: its agent, or `lockstep status`.
The real multi-host sessions that leave one are in tests/deploy/test_multi_host.py; here one host
with its real agent, whose record is marked as such a host's is, with the old slot's worker
running again as a retire that never ran leaves it."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from lockstep.actions.environment import load_environment
from lockstep.agent.client import AgentClient
from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.pipeline.history import History
from lockstep.pipeline.release_launch import plan_components
from lockstep.pipeline.unfinished_retire import retire_left
from tests.deploy.conftest import NotesProject, deploy_three_releases


def _leave_the_retire_unfinished(project: NotesProject, release_id: str) -> tuple[AgentClient, str]:
    """The idle slot's worker runs again, and the last record says its retire was left: the idle
    slot, holding `release_id`. The agent and the slot."""
    context = load_environment(project.directory, None, None)
    agent = AgentClient(context.layout.agent_socket, context.environment)
    status = agent.status()
    idle = next(slot for slot in status["slots"] if slot != status["active_slot"])
    release = status["slots"][idle]["release"]
    release_directory = Path(str(release["release_directory"]))
    plans = plan_components(context.config, release_directory, context.layout.shared, idle, only=["worker"])
    agent.start_components(idle, [plan.launch_document() for plan in plans])
    history = History(context.layout.history_database)
    record = history.all()[-1]
    record.retire_left = retire_left(idle, release_id)
    history.save(record)
    return agent, idle


def _running(agent: AgentClient, slot: str) -> set[str]:
    return {str(process["component"]) for process in agent.status()["slots"][slot]["processes"] if process["running"]}


def _last_record_once_unmarked(project: NotesProject) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        record = project.history()[-1]
        if record["retire_left"] is None or time.monotonic() > deadline:
            return record
        time.sleep(0.5)


def test_the_old_slot_s_workers_stop_and_the_record_says_so(notes_project: NotesProject) -> None:
    ids = deploy_three_releases(notes_project)
    agent, idle = _leave_the_retire_unfinished(notes_project, ids[1])
    assert _running(agent, idle) == {"web", "worker"}
    status = notes_project.status()  # it finishes the retire, or the agent did already
    assert status["active_slot"] != idle
    record = _last_record_once_unmarked(notes_project)
    assert record["retire_left"] is None
    assert f"its retire was finished afterwards (stopped worker in slot {idle})" in str(record["reason"])
    assert _running(agent, idle) == {"web"}  # kept warm for a rollback, as a retire does
    assert notes_project.version() == "1.0.3"
    assert notes_project.history()[-1]["reason"] == record["reason"]  # done once


def test_a_slot_that_moved_on_is_left_alone(notes_project: NotesProject) -> None:
    """The slot left no longer holds the release the mark names (a later operation replaced it):
    what runs there now is not the retire's to stop; the mark just goes."""
    ids = deploy_three_releases(notes_project)
    agent, idle = _leave_the_retire_unfinished(notes_project, ids[0])  # 1.0.2 is there, not 1.0.1
    notes_project.status()
    record = _last_record_once_unmarked(notes_project)
    assert record["retire_left"] is None and "its retire was finished" not in str(record["reason"] or "")
    assert _running(agent, idle) == {"web", "worker"}


def test_two_clean_ups_at_once_finish_the_retire_once_and_keep_its_note(
    notes_project: NotesProject, tmp_path: Path
) -> None:
    """The agent's watch and `lockstep status` can find the same mark at once. The agent's watch
    and a first `status` stop at their reading of the records until a second `status` has had
    seconds to act: none may act on what it read before another was done, or it finds the
    worker stopped and saves the record again without the note."""
    ids = deploy_three_releases(notes_project)
    go_ahead = tmp_path / "go-ahead"
    waiting = go_ahead.with_name(go_ahead.name + WAITING_SUFFIX)
    assert notes_project.lockstep("agent", "stop").returncode == 0
    assert notes_project.agent is not None
    notes_project.agent.wait(timeout=30)
    notes_project.env.update({WAIT_AT_VARIABLE: "retires read", WAIT_FOR_VARIABLE: str(go_ahead)})
    notes_project.start_agent()  # its watch waits there too, once a record holds a mark
    agent, idle = _leave_the_retire_unfinished(notes_project, ids[1])
    try:
        first = notes_project.popen_lockstep("status", "--json")
    finally:
        del notes_project.env[WAIT_AT_VARIABLE], notes_project.env[WAIT_FOR_VARIABLE]
    deadline = time.monotonic() + 30
    while not waiting.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting.exists(), first.communicate()
    time.sleep(1)  # the first `status`, or the agent's watch, reads too
    second = notes_project.popen_lockstep("status", "--json")
    with contextlib.suppress(subprocess.TimeoutExpired):
        second.wait(timeout=8)  # without a lock it finishes the retire meanwhile; with one it waits
    go_ahead.touch()
    for process in (first, second):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    record = _last_record_once_unmarked(notes_project)
    assert f"its retire was finished afterwards (stopped worker in slot {idle})" in str(record["reason"])
    assert str(record["reason"]).count("its retire was finished") == 1
    assert _running(agent, idle) == {"web"}
