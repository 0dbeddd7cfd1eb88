"""`lockstep rollback --dry-run`: the plan of the rollback, and nothing changed (the processes, the
traffic, the history, the data); refused where the rollback would be, with its exit code. The notes
app, a real agent, the built-in proxy and real processes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.conftest import NotesProject, deploy_three_releases

pytestmark = pytest.mark.slow


def bump(project: NotesProject, version: str) -> None:
    (project.directory / "VERSION").write_text(version + "\n")
    project.commit(f"notes {version}")


def deploy(project: NotesProject) -> dict[str, Any]:
    completed = project.lockstep("deploy", "--json")
    assert completed.returncode == 0, completed.err
    document: dict[str, Any] = json.loads(completed.out)
    return document


def observed(project: NotesProject) -> dict[str, Any]:
    """What a dry run must leave as it was: every process (with its PID), the slots, the traffic,
    the history and every row of the database."""
    status = project.status()
    processes = {
        slot: sorted((item["component"], item["pid"], item["running"]) for item in detail["processes"])
        for slot, detail in status["slots"].items()
    }
    releases = {slot: detail["components"] for slot, detail in status["slots"].items()}
    lock = project.lockstep("lock", "status", "--json")
    return {
        "active": status["active_slot"],
        "processes": processes,
        "releases": releases,
        "history": project.history(),
        "rows": project.database_rows(),
        "version": project.version(),
        "lock": (lock.returncode, lock.out),
    }


def test_a_dry_run_after_two_deploys_prints_the_plan_and_changes_nothing(notes_project: NotesProject) -> None:
    first = deploy(notes_project)
    bump(notes_project, "1.0.1")
    second = deploy(notes_project)
    notes_project.add_note("written under 1.0.1")
    before = observed(notes_project)

    planned = notes_project.lockstep("rollback", "--dry-run")
    assert planned.returncode == 0, planned.err
    lines = planned.out.splitlines()
    assert lines[0].startswith(
        f"rollback test from release {second['release_id']} (slot green) to release {first['release_id']} "
    ), planned.out
    assert "1. lock environment test in the repository (free now)" in lines
    assert (
        "2. pre-switch check: web still runs in slot blue, with at most 0 exits since the rollback found it warm"
        in (lines)
    ), planned.out
    assert any(
        line.startswith("3. switch traffic at ") and "to slot blue: WARM (web of release" in line for line in lines
    ), planned.out
    assert any(line.startswith("4. start the stopped worker of release") for line in lines), planned.out
    assert any(line.startswith("5. retire slot green after draining") for line in lines), planned.out
    document = json.loads(notes_project.lockstep("rollback", "--dry-run", "--json").out)
    assert document["from"] == {"release_id": second["release_id"], "slot": "green", "commit": second["commit"]}
    assert document["to"]["release_id"] == first["release_id"]
    assert (document["to"]["slot"], document["to"]["warm"], document["with_data"]) == ("blue", True, False)
    assert document["plan"] == lines

    assert observed(notes_project) == before
    # The plan predicted it: the real rollback goes there.
    assert notes_project.lockstep("rollback").returncode == 0
    assert notes_project.version() == "1.0.0"


def test_a_data_dry_run_lists_what_the_restore_would_discard(notes_project: NotesProject) -> None:
    deploy(notes_project)
    notes_project.add_note("kept by the restore")
    bump(notes_project, "1.0.1")
    second = deploy(notes_project)  # its pre-deploy snapshot holds the first note
    notes_project.add_note("lost by the restore")
    notes_project.add_note("lost too")
    before = observed(notes_project)

    planned = notes_project.lockstep("rollback", "--with-data", "--dry-run")
    assert planned.returncode == 0, planned.err
    snapshot = second["snapshot_id"]
    assert f"restore data from snapshot {snapshot[:8]} " in planned.out, planned.out
    assert "database main, table notes: 2 rows added" in planned.out, planned.out
    assert "stop workers of slot green: worker" in planned.out
    assert "stop all of it" in planned.out  # the release left behind does not stay warm
    document = json.loads(notes_project.lockstep("rollback", "--with-data", "--dry-run", "--json").out)
    assert document["data"]["snapshot_id"] == snapshot
    notes = next(
        table for database in document["data"]["databases"] for table in database["tables"] if table["table"] == "notes"
    )
    assert notes["rows_added"] == 2, notes
    assert any("table notes: 2 rows added" in line for line in document["data"]["discarded"])

    assert observed(notes_project) == before
    rolled_back = notes_project.lockstep("rollback", "--with-data", "--yes")
    assert rolled_back.returncode == 0, rolled_back.err
    assert notes_project.notes() == ["kept by the restore"]


def test_a_dry_run_says_a_cold_slot_must_be_started(notes_project: NotesProject) -> None:
    """1.0.3 serves from blue, 1.0.2 is warm in green: back to 1.0.1 means starting it in green."""
    ids = deploy_three_releases(notes_project)
    before = observed(notes_project)
    document = json.loads(notes_project.lockstep("rollback", "--to", ids[0], "--dry-run", "--json").out)
    assert (document["to"]["slot"], document["to"]["warm"]) == ("green", False)
    steps = document["steps"]
    assert any(step.startswith("slot green is COLD") for step in steps), steps
    assert any(step.startswith(f"start release {ids[0]} in slot green: web: ") for step in steps), steps
    assert "pre-switch check: web, worker still run, with at most 0 exits since the health gate" in steps, steps
    assert observed(notes_project) == before


def test_a_dry_run_refuses_where_the_rollback_would(notes_project: NotesProject) -> None:
    """The same exit code as the rollback itself, for each refusal."""

    def both(*arguments: str) -> tuple[int, int]:
        dry = notes_project.lockstep("rollback", *arguments, "--dry-run")
        real = notes_project.lockstep("rollback", *arguments)
        return dry.returncode, real.returncode

    assert both() == (13, 13)  # nothing deployed: no earlier release, as after the first deploy (it was 2)
    deploy(notes_project)
    assert both() == (13, 13)  # the first release: nothing before it
    notes_project.apply("v2", "notes 2.0.0 (a migration)")
    deploy(notes_project)
    assert both("--to", "nothing-like-this") == (13, 13)
    assert both("--code-only") == (2, 2)  # 1.0.0 expects an older schema
    assert notes_project.version().startswith("2.")


def test_a_dry_run_of_one_component_plans_that_component_only(notes_project: NotesProject) -> None:
    """--component worker is replaced where it runs (no traffic moves); --component web goes
    through the warm slot, and nothing is retired."""
    deploy(notes_project)
    bump(notes_project, "1.0.1")
    deploy(notes_project)
    before = observed(notes_project)
    worker = json.loads(notes_project.lockstep("rollback", "--component", "worker", "--dry-run", "--json").out)
    assert (worker["component"], worker["to"]["slot"], worker["to"]["warm"]) == ("worker", "green", False)
    assert worker["steps"][1].startswith("replace worker in slot green (no traffic moves)"), worker["steps"]
    web = json.loads(notes_project.lockstep("rollback", "--component", "web", "--dry-run", "--json").out)
    assert (web["to"]["slot"], web["to"]["warm"]) == ("blue", True)
    assert [step.split(":")[0].split(" ")[0] for step in web["steps"]] == ["lock", "pre-switch", "switch"], web
    assert observed(notes_project) == before
