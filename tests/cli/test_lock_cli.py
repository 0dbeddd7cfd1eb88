"""`lockstep lock status | release` end to end: the real CLI, a real repository, real lock holders."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.pipeline.environment_lock import EnvironmentLock, EnvironmentLocked
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from lockstep.storage.location import open_backend
from tests.conftest import TEST_PASSWORD, Completed, run_lockstep
from tests.pipeline.test_environment_lock import PROJECT, StartDeployer, holder_for, start_deployer  # noqa: F401


class Project:
    """A directory with a lockstep.toml (environments production by default, and staging) and its repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repository = root / "repository"
        Repository.init(LocalBackend(self.repository), TEST_PASSWORD).close()
        (root / "lockstep.toml").write_text(
            f'project = "{PROJECT}"\n\n[repository]\nurl = "{self.repository}"\n\n[environments.staging]\n'
        )
        self.env = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "COLUMNS": "250"}

    def lockstep(self, *arguments: str) -> Completed:
        # stdin is an empty pipe, never the terminal pytest may run in: "no TTY" is what is tested.
        return run_lockstep(list(arguments), cwd=self.root, env=self.env, input=b"")

    def status(self, *arguments: str) -> list[dict[str, Any]]:
        result = self.lockstep("lock", "status", "--json", *arguments)
        assert result.returncode == 0, result.err
        documents: list[dict[str, Any]] = json.loads(result.out)
        return documents

    def lock_exists(self, environment: str = "production") -> bool:
        return (self.repository / "lockstep" / "projects" / PROJECT / "locks" / environment).exists()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_status_without_locks(project: Project) -> None:
    """Nothing locked: every configured environment (the default one too) is reported unlocked."""
    statuses = project.status()
    assert [status["environment"] for status in statuses] == ["production", "staging"]
    assert all(status["locked"] is False and status["holder"] is None for status in statuses)
    assert "environment production is unlocked" in project.lockstep("lock", "status").out
    [staging] = project.status("--env", "staging")
    assert staging["environment"] == "staging" and staging["locked"] is False and staging["holder"] is None
    assert "environment staging is unlocked" in project.lockstep("lock", "status", "--env", "staging").out


def test_status_shows_the_holder(project: Project, start_deployer: StartDeployer) -> None:  # noqa: F811
    """A held lock shows holder, operation, deploy ID, since, heartbeat, and live or stale and why."""
    holder = start_deployer(str(project.repository), "20261122_060000_abc1234", environment="staging")
    assert holder.line().startswith("won")
    production, status = project.status()
    assert production["environment"] == "production" and production["locked"] is False
    assert status["environment"] == "staging" and status["locked"] is True and status["stale"] is False
    assert "heartbeat" in status["reason"]
    document = status["holder"]
    assert document["deploy_id"] == "20261122_060000_abc1234"
    assert document["operation"] == "deploy" and document["pid"] == holder.process.pid
    assert document["acquired_at"] and document["heartbeat_at"] and document["message"] == "child"
    table = project.lockstep("lock", "status").out
    for expected in ("staging", "locked", "20261122_060000_abc1234", f"PID {holder.process.pid}", "UTC"):
        assert expected in table
    holder.kill()
    [status] = project.status("--env", "staging")
    assert status["stale"] is True and "no longer runs" in status["reason"]
    assert "stale" in project.lockstep("lock", "status").out


def test_release_of_a_live_lock_needs_yes_without_a_terminal(
    project: Project,
    start_deployer: StartDeployer,  # noqa: F811
) -> None:
    """Without a TTY and without --yes a live lock stays (usage error); with --yes it goes, and the
    deploy that held it notices through its heartbeat."""
    holder = start_deployer(str(project.repository), "live-deploy", mode="watch")
    assert holder.line().startswith("won")
    refused = project.lockstep("lock", "release")
    assert refused.returncode == ExitCode.USAGE, refused.err
    assert "live-deploy" in refused.out and "--yes" in refused.err
    assert project.lock_exists()
    released = project.lockstep("lock", "release", "--yes", "--json")
    assert released.returncode == 0, released.err
    document = json.loads(released.out)
    assert document["released"] is True and document["holder"]["deploy_id"] == "live-deploy"
    assert not project.lock_exists()
    assert holder.line() == "noticed-loss"
    assert not any(status["locked"] for status in project.status())


def test_stale_lock_is_released_without_confirmation(
    project: Project,
    start_deployer: StartDeployer,  # noqa: F811
) -> None:
    """The lock of a killed deploy is stale: release removes it at once and says whose it was."""
    holder = start_deployer(str(project.repository), "crashed-deploy")
    assert holder.line().startswith("won")
    holder.kill()
    released = project.lockstep("lock", "release", "--env", "production")
    assert released.returncode == 0, released.err
    assert "crashed-deploy" in released.out and "stale" in released.out and "released" in released.out
    assert not project.lock_exists()
    again = project.lockstep("lock", "release", "--json")
    assert again.returncode == 0 and json.loads(again.out)["released"] is False


def test_release_asks_on_a_terminal_and_no_keeps_the_lock(project: Project) -> None:
    """On a terminal a live lock needs a yes; answering no leaves it and exits LOCKED."""
    repository = Repository.open(open_backend(str(project.repository)), TEST_PASSWORD)
    lock = EnvironmentLock(DocumentStore(repository), PROJECT, "production")
    lock.acquire(holder_for("terminal-deploy"))
    try:
        for answer, expected_code, still_locked in ((b"n\n", ExitCode.LOCKED, True), (b"y\n", ExitCode.OK, False)):
            controller, terminal = pty.openpty()
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "lockstep", "lock", "release"],
                    stdin=terminal,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=project.root,
                    env={**os.environ, **project.env},
                )
                os.write(controller, answer)
                out, err = process.communicate(timeout=120)
            finally:
                os.close(terminal)
                os.close(controller)
            assert process.returncode == expected_code, err
            assert b"terminal-deploy" in out and b"release the live lock of production?" in err
            assert project.lock_exists() == still_locked
        assert lock.lost or not lock.heartbeat()
    finally:
        lock.release()
        repository.close()


def test_a_kept_lock_says_why_under_json_too(project: Project) -> None:
    """Answering no exits LOCKED; the human output named the holder and what to do, while --json
    printed `"hint": null`. The hint now names the holder and the command that releases it."""
    repository = Repository.open(open_backend(str(project.repository)), TEST_PASSWORD)
    lock = EnvironmentLock(DocumentStore(repository), PROJECT, "production")
    lock.acquire(holder_for("json-terminal-deploy"))
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "lockstep", "--json", "lock", "release"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=project.root,
            env={**os.environ, **project.env},
        )
        os.write(controller, b"n\n")
        out, err = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
        lock.release()
        repository.close()
    assert process.returncode == ExitCode.LOCKED, err
    document = json.loads(out)
    assert document["exit_code"] == ExitCode.LOCKED
    assert document["error"] == "left the lock of environment production in place"
    hint = document["hint"]
    assert hint is not None and "json-terminal-deploy" in hint and f"PID {os.getpid()}" in hint
    assert "lockstep lock release --env production --yes" in hint
    assert hint in err.decode(), "the human error line carries the same hint"


LONG_MESSAGE = (
    "hotfix for the checkout totals: rounding of VAT on discounted bundles, see "
    "https://tracker.example.com/browse/SHOP-4711 and the incident notes of the night shift"
)


@pytest.mark.parametrize("columns", ["80", "120", "160", "180", "250"])
def test_status_shows_the_whole_message_at_any_width(project: Project, columns: str) -> None:
    """At widths where the table measured as fitting (rich counts a no_wrap cell by its longest
    word), the Message column was squeezed to three characters and every line cut to "ho…"."""
    repository = Repository.open(open_backend(str(project.repository)), TEST_PASSWORD)
    lock = EnvironmentLock(DocumentStore(repository), PROJECT, "production")
    lock.acquire(holder_for("long-message-deploy", message=LONG_MESSAGE))
    try:
        result = run_lockstep(["lock", "status"], cwd=project.root, env={**project.env, "COLUMNS": columns}, input=b"")
    finally:
        lock.release()
        repository.close()
    assert result.returncode == 0, result.err
    assert "…" not in result.out and "long-message-deploy" in result.out, result.out
    lines = result.out.splitlines()
    assert all(len(line) <= int(columns) for line in lines if "│" in line), result.out
    message_cells = [line.split("│")[-2].strip() for line in lines if line.startswith("│")]
    if message_cells:  # the table: the message wrapped in its column, words whole
        shown = " ".join(cell for cell in message_cells if cell)
    else:  # too narrow for the table: `header: value` lines
        shown = next(line.split("message: ", 1)[1] for line in lines if line.lstrip().startswith("message: "))
    assert shown == LONG_MESSAGE, result.out


def test_unknown_or_invalid_environment_is_a_usage_error(project: Project) -> None:
    """A typo in --env is an error, not a reassuring "unlocked"."""
    for name in ("prodution", "../x"):
        result = project.lockstep("lock", "status", "--env", name)
        assert result.returncode == ExitCode.USAGE, result.err


def test_without_env_the_lock_is_looked_up_where_the_default_environment_deploys(
    project: Project,
    start_deployer: StartDeployer,  # noqa: F811
) -> None:
    """production (default_environment) keeps its repository, and so its deploy lock, apart: `lock
    status` and `lock release` without --env looked in the top-level repository and said unlocked."""
    production_repository = project.root / "production-repository"
    Repository.init(LocalBackend(production_repository), TEST_PASSWORD).close()
    with (project.root / "lockstep.toml").open("a") as config:
        config.write(f'\n[environments.production.repository]\nurl = "{production_repository}"\n')
    holder = start_deployer(str(production_repository), "crashed-deploy")
    assert holder.line().startswith("won")
    holder.kill()
    production, _staging = project.status()
    assert production["environment"] == "production" and production["locked"] is True, production
    released = project.lockstep("lock", "release")
    assert released.returncode == 0 and "crashed-deploy" in released.out, (released.out, released.err)
    assert not (production_repository / "lockstep" / "projects" / PROJECT / "locks" / "production").exists()


def test_a_lock_taken_by_hand_holds_deploys_off_until_released(project: Project) -> None:
    """`lock acquire -m` (Kamal's): no process and no heartbeat, never stale however long it is
    held; a deploy's lock is refused naming its message; release needs no --yes and frees it."""
    (project.root / "lockstep.toml").write_text(
        f'project = "{PROJECT}"\n\n[repository]\nurl = "{project.repository}"\n\n[deploy]\nlock_stale_after = 1\n\n'
        "[environments.staging]\n"
    )
    taken = project.lockstep("lock", "acquire", "-m", "database maintenance until 14:00", "--json")
    assert taken.returncode == 0, taken.err
    holder = json.loads(taken.out)["holder"]
    assert holder["operation"] == "manual" and holder["pid"] == 0
    assert holder["message"] == "database maintenance until 14:00"
    time.sleep(2)  # twice lock_stale_after without a heartbeat: a deploy's lock would be stale
    [status] = project.status("--env", "production")
    assert status["locked"] is True and status["stale"] is False and "by hand" in status["reason"]
    table = project.lockstep("lock", "status").out
    assert "manual" in table and "database maintenance until 14:00" in table and "PID" not in table

    repository = Repository.open(open_backend(str(project.repository)), TEST_PASSWORD)
    try:
        deploy_lock = EnvironmentLock(DocumentStore(repository), PROJECT, "production", stale_after=1)
        with pytest.raises(EnvironmentLocked) as refused:
            deploy_lock.acquire(holder_for("would-be-deploy"))
        assert "database maintenance until 14:00" in refused.value.message
        assert "lockstep lock release --env production" in str(refused.value.hint)
        again = project.lockstep("lock", "acquire", "-m", "someone else")
        assert again.returncode == ExitCode.LOCKED and "database maintenance until 14:00" in again.err

        released = project.lockstep("lock", "release", "--json")  # no terminal, no --yes
        assert released.returncode == 0, released.err
        assert json.loads(released.out)["released"] is True and not project.lock_exists()
        deploy_lock.acquire(holder_for("the-deploy"))
        deploy_lock.release()
    finally:
        repository.close()


def test_a_lock_taken_by_hand_needs_a_one_line_message(project: Project) -> None:
    for message in ("", "   ", "two\nlines", "x" * 501):
        refused = project.lockstep("lock", "acquire", "-m", message)
        assert refused.returncode == ExitCode.USAGE, (message, refused.err)
        assert not project.lock_exists()
    missing = project.lockstep("lock", "acquire")
    assert missing.returncode == ExitCode.USAGE and "--message" in missing.err
