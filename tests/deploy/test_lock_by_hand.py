"""A lock taken by hand (`lockstep lock acquire -m`) against real deploys and rollbacks: they
refuse at once naming its message and the way out, `--force` does not take it, and
`--lock-wait` waits for its release."""

from __future__ import annotations

import json
import time

from tests.deploy.conftest import NotesProject


def test_deploys_and_rollbacks_wait_for_a_lock_taken_by_hand(notes_project: NotesProject) -> None:
    assert notes_project.lockstep("deploy").returncode == 0
    (notes_project.directory / "VERSION").write_text("1.1.0\n")
    notes_project.commit("notes 1.1.0")
    assert notes_project.lockstep("deploy").returncode == 0
    taken = notes_project.lockstep("lock", "acquire", "-m", "restoring the orders table by hand")
    assert taken.returncode == 0, taken.err

    for command in (["rollback"], ["deploy"], ["rollback", "--force"], ["deploy", "--force", "--yes"]):
        refused = notes_project.lockstep(*command)  # --force takes a deploy's live lock, never this one
        assert refused.returncode == 4, (command, refused.err)
        assert "restoring the orders table by hand" in refused.err, refused.err
        assert "lockstep lock release --env test" in refused.err
    assert notes_project.version() == "1.1.0"

    waiting = notes_project.popen_lockstep("rollback", "--lock-wait", "120s")
    time.sleep(3)
    assert waiting.poll() is None  # held off while the lock stays
    assert notes_project.lockstep("lock", "release").returncode == 0
    _, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err.decode()
    assert notes_project.version() == "1.0.0"
    status = notes_project.lockstep("lock", "status", "--json")
    assert not any(item["holder"] for item in json.loads(status.out))
