"""The GitHub Actions channel and the JSON-lines event log: files and output they really write."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from pathlib import Path

from lockstep.notify.config import NotificationsConfig
from lockstep.notify.dispatcher import Notifier
from tests.notify import Warnings, sample_event


def actions_notifier(tmp_path: Path, environ: dict[str, str], stdout: io.StringIO, warnings: Warnings) -> Notifier:
    config = NotificationsConfig.model_validate({"channels": [{"kind": "github-actions"}]})
    return Notifier(config, tmp_path, "production", warn=warnings, environ=environ, stdout=lambda: stdout)


def test_github_actions_writes_annotations_and_step_summary(tmp_path: Path) -> None:
    """With GITHUB_ACTIONS=true: ::error for a failure, ::notice for success, one summary line per event."""
    summary = tmp_path / "step-summary.md"
    summary.write_text("# Deploy\n")
    stdout = io.StringIO()
    warnings = Warnings()
    environ = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    notifier = actions_notifier(tmp_path, environ, stdout, warnings)
    notifier.notify(sample_event("deploy.failed"))
    notifier.notify(sample_event("deploy.succeeded"))
    notifier.notify(sample_event("snapshot.rpo_exceeded"))
    notifier.close(timeout=30)

    lines = stdout.getvalue().splitlines()
    assert lines == [
        "::error title=lockstep deploy.failed (production)::deploy.failed for shop at 3f2c1a9",
        "::notice title=lockstep deploy.succeeded (production)::deploy.succeeded for shop at 3f2c1a9",
        "::warning title=lockstep snapshot.rpo_exceeded (production)::snapshot.rpo_exceeded for shop at 3f2c1a9",
    ]
    written = summary.read_text().splitlines()
    assert written[0] == "# Deploy"
    assert len(written) == 4
    assert written[1].startswith("- ❌ **deploy.failed** `production` — deploy.failed for shop at 3f2c1a9")
    assert "d-20261122-0600" in written[1]
    assert warnings.lines == []


def test_github_actions_escapes_newlines_so_one_event_is_one_command(tmp_path: Path) -> None:
    """A multi-line summary becomes %0A inside one annotation, so it cannot inject a second workflow command."""
    stdout = io.StringIO()
    notifier = actions_notifier(tmp_path, {"GITHUB_ACTIONS": "true"}, stdout, Warnings())
    event = sample_event("deploy.failed")
    notifier.notify(type(event)(event.kind, event.environment, "failed\n::add-mask::x 100%", {}, event.at))
    notifier.close(timeout=30)
    assert stdout.getvalue() == "::error title=lockstep deploy.failed (production)::failed%0A::add-mask::x 100%25\n"


def test_github_actions_is_silent_outside_actions(tmp_path: Path) -> None:
    """Without GITHUB_ACTIONS=true nothing is printed and no summary file is created."""
    stdout = io.StringIO()
    summary = tmp_path / "summary.md"
    notifier = actions_notifier(tmp_path, {"GITHUB_STEP_SUMMARY": str(summary)}, stdout, Warnings())
    notifier.notify(sample_event("deploy.failed"))
    notifier.close(timeout=30)
    assert stdout.getvalue() == ""
    assert not summary.exists()


def test_event_log_appends_one_redacted_json_line_per_event(tmp_path: Path) -> None:
    """Events append as JSON lines to a path relative to the base directory, owner-only, secrets masked."""
    warnings = Warnings()
    config = NotificationsConfig.model_validate({"channels": [{"kind": "event-log", "path": "logs/events.jsonl"}]})
    notifier = Notifier(config, tmp_path, "staging", warn=warnings, environ={"DEPLOY_TOKEN": "tok-123456789"})
    notifier.notify(sample_event("deploy.started", note="token tok-123456789"))
    event = sample_event("lock.broken")
    notifier.notify(type(event)(event.kind, None, "lock broken by ops", {"by": "ops"}, event.at))
    notifier.close(timeout=30)

    path = tmp_path / "logs" / "events.jsonl"
    raw = path.read_text()
    assert "tok-123456789" not in raw
    documents = [json.loads(line) for line in raw.splitlines()]
    assert [document["kind"] for document in documents] == ["deploy.started", "lock.broken"]
    assert documents[0]["details"]["note"] == "token ***"
    assert documents[1]["environment"] == "staging"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert warnings.lines == []


def test_event_log_lines_stay_whole_under_concurrent_writers(tmp_path: Path) -> None:
    """Two notifiers appending at once (two lockstep processes) never interleave partial lines."""
    path = tmp_path / "events.jsonl"
    config = NotificationsConfig.model_validate({"channels": [{"kind": "event-log", "path": str(path)}]})
    notifiers = [Notifier(config, tmp_path, "production", warn=Warnings(), environ={}) for _ in range(2)]

    def send(notifier: Notifier) -> None:
        for _ in range(100):
            notifier.notify(sample_event("snapshot.created", padding="x" * 2000))

    threads = [threading.Thread(target=send, args=(notifier,)) for notifier in notifiers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for notifier in notifiers:
        notifier.close(timeout=60)
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["kind"] == "snapshot.created" for line in lines)


def test_unwritable_event_log_warns_and_other_channels_still_work(tmp_path: Path) -> None:
    """An event log whose directory is a file fails with a warning; a second channel delivers regardless."""
    (tmp_path / "blocked").write_text("a file, not a directory")
    good = tmp_path / "good.jsonl"
    warnings = Warnings()
    config = NotificationsConfig.model_validate(
        {
            "retry_delay_seconds": 0.01,
            "channels": [
                {"kind": "event-log", "name": "broken-log", "path": "blocked/events.jsonl"},
                {"kind": "event-log", "path": str(good)},
            ],
        }
    )
    notifier = Notifier(config, tmp_path, None, warn=warnings, environ={})
    notifier.notify(sample_event("deploy.started"))
    notifier.close(timeout=30)
    (line,) = warnings.wait_for(1)
    assert "broken-log" in line
    assert "blocked/events.jsonl" in line
    assert len(good.read_text().splitlines()) == 1
