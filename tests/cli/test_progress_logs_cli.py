"""Step logs of the long-running snapshot commands (backup, snapshot create, verify, restore,
forget), as a deploy has them: JSON lines on stderr with env, step and duration, --quiet, --verbose,
the --json document alone on stdout, and no secret anywhere."""

from __future__ import annotations

import json
from typing import Any

from lockstep.cli.reporting import ConsoleReporter
from tests.cli.test_backup_cli import Project, postgresql_database, project, sqlite_only
from tests.conftest import TEST_PASSWORD, Completed

__all__ = ["postgresql_database", "project"]  # fixtures, imported to be used here

FILE_SECRET = "file-pass-NEVER-LOGGED-4b2e"  # a database password from password_file


def json_lines(completed: Completed) -> list[dict[str, Any]]:
    """Every stderr line, parsed: a line that is not JSON fails the test."""
    events = [json.loads(line) for line in completed.err.splitlines() if line.strip()]
    assert events, completed.err
    return events


def finished_steps(events: list[dict[str, Any]], operation: str) -> list[str]:
    """The steps that finished, after checking each event carries what a log pipeline needs."""
    steps = []
    for event in events:
        assert event["operation"] == operation and "env" in event and isinstance(event["time"], float), event
        if event["event"] in ("step-finished", "step-failed"):
            assert isinstance(event["duration"], float) and event["duration"] >= 0, event
            steps.append(event["step"])
    return steps


def no_secrets(*outputs: str) -> None:
    everything = "".join(outputs)
    for secret in (TEST_PASSWORD, FILE_SECRET):
        assert secret not in everything


def test_backup_logs_each_step_as_json_and_keeps_the_document_on_stdout(
    project: Project, postgresql_database: str
) -> None:
    """--log-format json --verbose --json: the result document on stdout, step events on stderr,
    the PostgreSQL password (from a file) and the repository password in neither."""
    password_file = project.root / "shop.password"
    password_file.write_text(FILE_SECRET + "\n")
    password_file.chmod(0o600)
    project.write_config(
        {**sqlite_only(project), "shop": {"url": postgresql_database, "password_file": str(password_file)}},
        {"verify_level": "restore", "min_free_disk_mb": 1},
    )
    completed = project.lockstep("backup", "--log-format", "json", "--verbose", "--json")
    assert completed.returncode == 0, completed.err
    document = json.loads(completed.out)
    assert document["ok"] is True
    events = json_lines(completed)
    steps = finished_steps(events, "backup")
    assert steps[:2] == ["preflight", "snapshot"] and steps[-1] == "verify", steps
    assert {"test-restore main", "test-restore shop", "retention"} <= set(steps)
    assert all(event["env"] == "default" for event in events)
    verify = next(event for event in events if event.get("step") == "verify" and event["event"] == "step-finished")
    assert verify["snapshot_id"] == document["snapshot_id"]
    details = [event["message"] for event in events if event["event"] == "detail"]
    assert any(message.startswith("database shop: postgresql") for message in details), details
    no_secrets(completed.out, completed.err)


def test_backup_is_silent_under_cron_and_talks_on_request(project: Project) -> None:
    """No terminal (cron): one line, nothing on stderr; --quiet keeps JSON lines off too; text on request."""
    project.write_config(sqlite_only(project), {"min_free_disk_mb": 1})
    cron = project.lockstep("backup")
    assert cron.returncode == 0 and cron.err == "" and cron.out.startswith("backup ok:"), cron.err
    quiet = project.lockstep("backup", "--quiet", "--log-format", "json")
    assert quiet.returncode == 0 and quiet.err == "", quiet.err
    text = project.lockstep("backup", "--log-format", "text")
    assert text.returncode == 0, text.err
    assert "→ preflight" in text.err and "✓ snapshot" in text.err and "✓ verify" in text.err
    assert "database main:" not in text.err  # a detail: --verbose only
    verbose = project.lockstep("backup", "--log-format", "text", "--verbose")
    assert "database main: sqlite" in verbose.err
    both = project.lockstep("backup", "--quiet", "--verbose")
    assert both.returncode == 2 and "exclude each other" in both.err
    no_secrets(cron.out, quiet.err, text.err, verbose.err)


def test_snapshot_commands_log_steps_with_env_and_duration(project: Project) -> None:
    """create, verify, restore and forget: JSON lines with the steps, --quiet silent, --json on stdout;
    the repository password, read from the config's password_file, in none of it."""
    project.write_config(sqlite_only(project), {})
    password_file = project.root / "repository.password"
    password_file.write_text(TEST_PASSWORD + "\n")
    password_file.chmod(0o600)
    config = project.root / "lockstep.toml"
    config.write_text(
        config.read_text().replace("[repository]\n", f'[repository]\npassword_file = "{password_file}"\n')
    )
    project.env["LOCKSTEP_PASSWORD"] = ""  # so the password comes from the file, which the environment does not show
    expected = {
        ("snapshot", "create", "-m", "logged"): ("snapshot-create", ["code", "snapshot"]),
        ("snapshot", "verify", "latest", "--level", "restore"): ("snapshot-verify", ["test-restore main", "verify"]),
        ("snapshot", "restore", "latest", "--yes"): (
            "snapshot-restore",
            ["compare", "pre-restore snapshot", "restore main"],
        ),
        ("snapshot", "forget", "--dry-run", "--prune"): ("snapshot-forget", ["plan", "prune"]),
    }
    outputs: list[str] = []
    for arguments, (operation, steps) in expected.items():
        logged = project.lockstep(*arguments, "--log-format", "json", "--json")
        assert logged.returncode == 0, (arguments, logged.err)
        json.loads(logged.out)  # the document alone on stdout
        events = json_lines(logged)
        assert finished_steps(events, operation) == steps, (arguments, logged.err)
        if operation != "snapshot-forget":
            assert all(event["env"] == "default" for event in events)
            assert len(events[-1]["snapshot_id"]) == 64, events[-1]
        quiet = project.lockstep(*arguments, "--quiet", "--log-format", "json")
        assert quiet.returncode == 0 and quiet.err == "", (arguments, quiet.err)
        assert quiet.out.strip(), "--quiet still prints the result"
        text = project.lockstep(*arguments, "--log-format", "text")
        assert text.returncode == 0 and f"✓ {steps[-1]}" in text.err, (arguments, text.err)
        outputs += [logged.out, logged.err, quiet.out, text.out, text.err]
    no_secrets(*outputs)


def test_a_failed_step_is_an_event_with_the_reason(project: Project) -> None:
    """A database that cannot be read: step-failed for the snapshot, with the reason and the duration."""
    password_file = project.root / "main.password"
    password_file.write_text(FILE_SECRET)
    password_file.chmod(0o600)
    project.write_config(
        {"main": {"url": "postgresql://postgres@127.0.0.1:1/nowhere", "password_file": str(password_file)}},
        {"min_free_disk_mb": 1},
    )
    failed = project.lockstep("snapshot", "create", "--log-format", "json")
    assert failed.returncode != 0
    lines = [line for line in failed.err.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]
    [failure] = [event for event in events if event["event"] == "step-failed"]
    assert failure["step"] == "snapshot" and failure["reason"] and failure["duration"] >= 0
    no_secrets(failed.out, failed.err)


def test_the_reporter_redacts_what_it_is_taught_and_what_looks_secret(capsys: Any) -> None:
    """Text and JSON: a password file's value, a URL password and a *_TOKEN assignment become ***."""
    for json_output in (True, False):
        reporter = ConsoleReporter(json_lines=json_output, verbosity=1)
        reporter.add_secret("from-a-password-file-77")
        reporter.bind(env="production")
        reporter.step_finished("dump", 0.5, "read from-a-password-file-77 and postgresql://u:hunter22@db/x")
        reporter.detail("API_TOKEN=abcdef123456 in the environment")
        reporter.warn("retrying postgresql://u:hunter22@db/x")
        written = capsys.readouterr().err
        for secret in ("from-a-password-file-77", "hunter22", "abcdef123456"):
            assert secret not in written
        assert written.count("***") >= 4, written


def test_quiet_keeps_warnings_and_failures_only(capsys: Any) -> None:
    reporter = ConsoleReporter(json_lines=True, verbosity=-1)
    reporter.step_started("snapshot", "")
    reporter.step_finished("snapshot", 1.0, "")
    reporter.info("progress")
    reporter.detail("detail")
    reporter.warn("a ping failed")
    reporter.step_failed("verify", 2.0, "a problem")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [event["event"] for event in events] == ["warning", "step-failed"]
