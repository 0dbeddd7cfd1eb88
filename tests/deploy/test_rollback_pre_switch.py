"""A rollback checks, right before it moves the traffic, what a deploy checks (pipeline/slot_exits.py):
the release it goes back to still runs, with no more exits than `watch_max_exits`. A rollback that
switched to a release which had just crashed reported success; it now fails undone (exit 3), the
release that served before serving on. The notes app, a real agent, the built-in proxy and real
processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from lockstep.pipeline.environment_lock import EnvironmentLock, LockHolder
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend
from tests.conftest import TEST_PASSWORD
from tests.deploy.conftest import NotesProject

pytestmark = pytest.mark.slow

# Appended to notes.py: a web process started while the shared directory holds `exit-once`
# exits 1, once, EXIT_AFTER seconds after it starts serving: after its health gate passed, while
# the worker's gate (2 s) still runs. The agent restarts it; the restarted one serves on.
EXITS_ONCE_WHEN_ASKED = """

EXIT_AFTER = 1.2


def after_start(database: Path, stopping: threading.Event) -> None:
    import os
    import sys

    marker = database.parent / "exit-once"
    if not marker.exists() or stopping.wait(EXIT_AFTER):
        return
    marker.unlink()
    print("notes: exiting once, on purpose", file=sys.stderr, flush=True)
    os._exit(1)
"""


def deploy(project: NotesProject, version: str) -> str:
    (project.directory / "VERSION").write_text(version + "\n")
    project.commit(f"notes {version}")
    completed = project.lockstep("deploy", "--json")
    assert completed.returncode == 0, completed.err
    return str(json.loads(completed.out)["release_id"])


def web_pid(project: NotesProject, slot: str) -> int:
    web = next(item for item in project.status()["slots"][slot]["processes"] if item["component"] == "web")
    return int(web["pid"])


def test_a_warm_slot_whose_web_exited_since_the_rollback_found_it_warm_gets_no_traffic(
    notes_project: NotesProject,
) -> None:
    """1.0.0 is warm in blue; the rollback reads the slots, then waits for the environment lock;
    meanwhile 1.0.0's web is killed (the agent restarts it). The rollback switched to it as if
    nothing happened; now its pre-switch check counts the exit and it fails, undone (exit 3; the
    history says "failed" for any rollback that failed)."""
    assert notes_project.lockstep("deploy").returncode == 0
    deploy(notes_project, "1.0.1")
    repository = Repository.open(open_backend(str(notes_project.directory / ".lockstep" / "repository")), TEST_PASSWORD)
    lock = EnvironmentLock(DocumentStore(repository), "notes", "test")
    lock.acquire(LockHolder.for_this_process("holding-for-the-test", "test", operation="deploy"))
    try:
        rollback = notes_project.run_until_step("lock", "rollback", "--lock-wait", "120s")
        killed = web_pid(notes_project, "blue")
        os.killpg(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while web_pid(notes_project, "blue") == killed:  # restarted: running again at the switch
            assert time.monotonic() < deadline, "the agent did not restart web"
            time.sleep(0.2)
    finally:
        lock.release()
    _, rest = rollback.communicate(timeout=300)
    assert rollback.returncode == 3, rest.decode()
    record = notes_project.history()[-1]
    assert (record["operation"], record["outcome"], record["failed_step"]) == (
        "rollback",
        "failed",
        "pre-switch check",
    ), record
    assert (
        "web exited 1 time(s) since this rollback found its slot warm (limit 0): killed by signal" in (record["reason"])
    ), record["reason"]
    assert notes_project.version() == "1.0.1"
    assert notes_project.status()["active_slot"] == "green"


def test_a_started_release_that_exits_after_its_health_gate_gets_no_traffic(notes_project: NotesProject) -> None:
    """1.0.3 serves from blue, 1.0.2 is warm in green: back to 1.0.1 starts it in green. Its web
    exits once after its health gate, while the worker's gate runs; the rollback switched to it
    all the same. Now the pre-switch check fails it, and the unwind stops green."""
    with (notes_project.directory / "notes.py").open("a") as notes:
        notes.write(EXITS_ONCE_WHEN_ASKED)
    target = deploy(notes_project, "1.0.1")
    deploy(notes_project, "1.0.2")
    deploy(notes_project, "1.0.3")
    shared: Path = notes_project.database.parent
    (shared / "exit-once").write_text("")
    rollback = notes_project.lockstep("rollback", "--to", target)
    assert not (shared / "exit-once").exists()  # the started web did exit
    assert rollback.returncode == 3, rollback.err
    record = notes_project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("failed", "pre-switch check"), record
    assert "web exited 1 time(s) since its health gate began (limit 0): exited with code 1" in record["reason"]
    assert notes_project.version() == "1.0.3"
    assert [item for item in notes_project.status()["slots"]["green"]["processes"] if item["running"]] == []
