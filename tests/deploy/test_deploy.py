"""`lockstep deploy` end to end: the notes app, a real agent, the built-in proxy, real processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.deploy.conftest import NOTES, NotesLoad, NotesProject, _stop_everything, make_project

pytestmark = pytest.mark.slow


def test_first_deploy_and_a_migration_serve_through_the_proxy(notes_project: NotesProject) -> None:
    """v1 then v2: each deploy is recorded, v2's migration runs, the notes survive it."""
    first = notes_project.lockstep("deploy", "-m", "first")
    assert first.returncode == 0, first.err
    assert notes_project.version() == "1.0.0"
    notes_project.add_note("written under v1")

    notes_project.apply("v2", "notes 2.0.0")
    second = notes_project.lockstep("deploy", "--json")
    assert second.returncode == 0, second.err
    record = json.loads(second.out)
    assert record["outcome"] == "succeeded"
    assert record["migrations_ran"] and record["migration_before"] == "001" and record["migration_after"] == "002"
    assert record["snapshot_id"]
    assert notes_project.version() == "2.0.0"
    assert notes_project.notes() == ["written under v1"]

    status = notes_project.status()
    assert status["active_slot"] == "green"
    assert status["release"] == record["id"]
    assert status["slots"]["blue"]["release"] is not None  # the previous web process stays warm
    history = notes_project.history()
    assert [item["outcome"] for item in history] == ["succeeded", "succeeded"]
    assert all(item["steps"] for item in history)


def test_dry_run_prints_the_plan_and_changes_nothing(notes_project: NotesProject) -> None:
    """--dry-run names every step and command; no release, no snapshot, no history."""
    completed = notes_project.lockstep("deploy", "--dry-run")
    assert completed.returncode == 0, completed.err
    for text in ("preflight", "git archive", "python3 migrate.py", "python3 app.py", "switch traffic", "watch"):
        assert text in completed.out
    assert notes_project.history() == []
    releases = notes_project.directory / ".lockstep" / "state" / "test" / "releases"
    assert not releases.exists() or not any(releases.iterdir())
    listed = notes_project.lockstep("snapshot", "list", "--json")
    assert json.loads(listed.out) == []


def test_dry_run_and_read_only_commands_create_no_state(tmp_path: Path) -> None:
    """--dry-run "changes nothing", yet it (and `status`, `history`) created the environment's
    state directory with a history.db; with a mistyped --env that left a stray environment
    behind. Nothing is written until an operation is recorded."""
    project = make_project(tmp_path)
    state = project.directory / ".lockstep" / "state"
    for arguments in (
        ("deploy", "--dry-run"),
        ("status",),
        ("history", "--json"),
        ("status", "--env", "prodution"),  # refused now (exit 2): still nothing written
        ("history", "--env", "prodution"),
    ):
        completed = project.lockstep(*arguments)
        assert completed.returncode == (2 if "prodution" in arguments else 0), (arguments, completed.err)
        assert not (state / "test").exists() and not (state / "prodution").exists(), arguments
    assert json.loads(project.lockstep("history", "--json").out) == []


def test_the_dry_run_plan_shows_no_secret(tmp_path: Path) -> None:
    """A hook with an Authorization header and a token from the environment: the plan, as text and
    as --json, shows the commands with the secrets masked (it printed them as written)."""
    bearer = "hook-bearer-5d1c-never-shown"
    project = make_project(
        tmp_path,
        extra_deploy=(
            "hooks = { post-deploy = \"curl -fsS -H 'Authorization: Bearer "
            + bearer
            + "' -d token="
            + SECRET_TOKEN
            + ' https://hooks.example/deployed" }'
        ),
    )
    project.env["DEPLOY_API_TOKEN"] = SECRET_TOKEN
    for arguments in (("deploy", "--dry-run"), ("deploy", "--dry-run", "--json")):
        completed = project.lockstep(*arguments)
        assert completed.returncode == 0, completed.err
        assert "hook post-deploy: curl -fsS -H 'Authorization: ***' -d token=***" in completed.out
        for secret in (bearer, SECRET_TOKEN):
            assert secret not in completed.out + completed.err


def test_a_release_that_never_gets_healthy_never_takes_traffic(notes_project: NotesProject) -> None:
    """v3 fails its health gate: exit 3, v2 keeps serving under load, the data is as before."""
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v2", "notes 2.0.0")
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.add_note("keep me #v2")
    notes_project.apply("v3-broken", "notes 3.0.0")
    with NotesLoad(notes_project.listen_port) as load:
        time.sleep(0.5)
        rows_before = notes_project.database_rows()
        completed = notes_project.lockstep("deploy")
        time.sleep(0.5)
    assert completed.returncode == 3, completed.err
    assert "rolled back" in completed.err and "not healthy" in completed.err
    assert "schema version 003" in completed.err  # the reason, from the health check's body
    assert load.report.failures == []
    assert set(load.report.versions) == {"2.0.0"}
    assert notes_project.version() == "2.0.0"
    history = notes_project.history()
    assert history[-1]["outcome"] == "rolled-back" and history[-1]["failed_step"] == "start"
    # The load kept writing notes; everything else is exactly as before the failed deploy.
    assert [row for row in notes_project.database_rows() if "load " not in str(row)] == [
        row for row in rows_before if "load " not in str(row)
    ]


def test_a_migration_that_fails_halfway_leaves_the_database_as_it_was(notes_project: NotesProject) -> None:
    """Migration 003 rewrites rows, 004 fails: the pre-deploy snapshot brings the data back."""
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v2", "notes 2.0.0")
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.add_note("first line\nsecond line #tag")
    notes_project.add_note("one line")
    rows_before = notes_project.database_rows()
    notes_project.apply("broken-migration", "notes 3.2.0")
    completed = notes_project.lockstep("deploy", "--json")
    assert completed.returncode == 3, completed.err
    assert "migration failed" in completed.err
    assert notes_project.database_rows() == rows_before
    assert notes_project.version() == "2.0.0"
    record = notes_project.history()[-1]
    assert record["failed_step"] == "migrate" and record["data_restored"]
    # --json prints the deploy record on failure too, beside the error: a CI script sees the step.
    printed = json.loads(completed.out)
    assert printed["exit_code"] == 3 and "migration failed" in printed["error"]
    assert (printed["id"], printed["outcome"], printed["failed_step"]) == (record["id"], "rolled-back", "migrate")
    assert printed["data_restored"] is True


def test_a_failing_smoke_test_rolls_back(tmp_path: Path) -> None:
    """A smoke check that fails keeps the new release away from the traffic."""
    project = make_project(
        tmp_path, extra_deploy='[[deploy.smoke]]\nhttp = "/api/notes"\nbody_contains = "no such text"\n'
    )
    project.start_agent()
    try:
        completed = project.lockstep("deploy")
        assert completed.returncode == 3, completed.err
        assert "smoke" in completed.err and "no such text" in completed.err
        status = project.status()
        assert status["active_slot"] is None
        assert all(not slot["processes"] for slot in status["slots"].values())
    finally:
        _stop_everything(project)


def _crashing_late(project: NotesProject) -> NotesProject:
    """The crash-loop release crashes 6 s after it starts instead of 2: after the switch, even on a
    slow machine (a crash before it fails the pre-switch check instead, test_deploy_watch.py)."""
    config = project.directory / "lockstep.toml"
    config.write_text(config.read_text().replace('NOTES_CACHE_WARMUP_DELAY = "2"', 'NOTES_CACHE_WARMUP_DELAY = "6"'))
    project.commit("the search cache warms up after 6 s")
    return project


def test_a_crash_loop_in_the_watch_window_rolls_back(tmp_path: Path) -> None:
    """The release passes its health gate, then crashes repeatedly: traffic goes back to v2."""
    project = _crashing_late(make_project(tmp_path, watch_seconds=12.0))
    project.start_agent()
    try:
        assert project.lockstep("deploy").returncode == 0
        project.apply("v2", "notes 2.0.0")
        assert project.lockstep("deploy").returncode == 0
        project.apply("crash-loop", "notes 3.1.0")
        with NotesLoad(project.listen_port) as load:
            completed = project.lockstep("deploy")
            time.sleep(0.5)
        assert completed.returncode == 3, completed.err
        assert project.history()[-1]["failed_step"] == "watch"
        assert project.version() == "2.0.0"
        # Requests that reached the crashing release while it had the traffic may fail; afterwards none.
        assert load.report.versions["2.0.0"] > 0
    finally:
        _stop_everything(project)


def test_zero_failed_requests_through_a_deploy_and_a_rollback(notes_project: NotesProject) -> None:
    """Continuous keep-alive and fresh-connection load, GETs and POSTs: not one request fails."""
    assert notes_project.lockstep("deploy").returncode == 0
    (notes_project.directory / "VERSION").write_text("1.1.0\n")
    notes_project.commit("notes 1.1.0")
    with NotesLoad(notes_project.listen_port) as load:
        time.sleep(0.5)
        deployed = notes_project.lockstep("deploy")
        time.sleep(0.5)
        started = time.monotonic()
        rolled_back = notes_project.lockstep("rollback", "--json")
        rollback_seconds = time.monotonic() - started
        time.sleep(0.5)
    assert deployed.returncode == 0, deployed.err
    assert rolled_back.returncode == 0, rolled_back.err
    assert load.report.failures == [], load.report.failures[:5]
    assert load.report.stale_retries == 0  # the built-in proxy never closes a connection under a client
    assert load.report.requests > 100
    assert set(load.report.versions) == {"1.0.0", "1.1.0"}
    assert notes_project.version() == "1.0.0"
    step = json.loads(rolled_back.out)["steps"][-1]
    assert "warm" in step["detail"]
    # How fast traffic is back is measured by bench/rollback.py, not asserted here; that it
    # came back while the command ran is.
    back = load.report.first_seen_after(started, "1.0.0")
    assert back is not None and back - started < rollback_seconds


def test_code_only_rollback_onto_a_newer_schema_is_refused_and_with_data_restores(
    notes_project: NotesProject,
) -> None:
    """Back to v1 needs the data too; --with-data shows what is discarded, then restores it."""
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.add_note("from v1")
    notes_project.apply("v2", "notes 2.0.0")
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.add_note("from v2 #lost")

    refused = notes_project.lockstep("rollback")
    assert refused.returncode == 2
    assert "migration version 001" in refused.err and "--with-data" in refused.err
    assert notes_project.version() == "2.0.0"

    unconfirmed = notes_project.lockstep("rollback", "--with-data")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.err, unconfirmed.err
    assert notes_project.notes() == ["from v1", "from v2 #lost"]

    completed = notes_project.lockstep("rollback", "--with-data", "--yes")
    assert completed.returncode == 0, completed.err
    assert "table notes: 1 row added (lost)" in completed.err
    assert notes_project.version() == "1.0.0"
    assert notes_project.notes() == ["from v1"]
    listed = json.loads(notes_project.lockstep("snapshot", "list", "--json").out)
    assert any(item["kind"] == "pre-restore" for item in listed)
    assert notes_project.history()[-1]["data_restored"]


def test_a_second_deploy_is_refused_while_one_runs(tmp_path: Path) -> None:
    """The environment lock names who holds it; --lock-wait waits for it instead."""
    project = make_project(tmp_path, watch_seconds=6.0)
    project.start_agent()
    try:
        first = project.popen_lockstep("deploy", "-m", "the long one")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lock = json.loads(project.lockstep("lock", "status", "--json").out)
            if any(item.get("holder") for item in lock):
                break
            time.sleep(0.2)
        second = project.lockstep("deploy")
        assert second.returncode == 4, second.err
        assert "the long one" in second.err and "--lock-wait" in second.err
        forced = project.lockstep("deploy", "--force")
        assert forced.returncode == 2 and "only after confirmation" in forced.err, forced.err
        waiting = project.lockstep("deploy", "--lock-wait", "120s", "--allow-dirty")
        first.wait(timeout=120)
        assert first.returncode == 0
        assert waiting.returncode == 0, waiting.err
    finally:
        _stop_everything(project)


@pytest.mark.usefixtures("hangup_not_ignored")
def test_a_dropped_ssh_session_sighup_undoes_the_deploy_and_names_the_step(notes_project: NotesProject) -> None:
    """SIGHUP (the ssh session running the deploy drops) ended it on the spot, nothing undone;
    it unwinds now, like SIGTERM, and the history names the step it stopped."""
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v2", "notes 2.0.0")
    process = notes_project.deploy_until_step("start")
    time.sleep(0.3)
    process.send_signal(signal.SIGHUP)
    assert process.stderr is not None
    process.stderr.read()
    assert process.wait(timeout=120) == 3  # failed and rolled back, as for SIGTERM and Ctrl-C
    assert notes_project.version() == "1.0.0"
    record = notes_project.history()[-1]
    assert (record["outcome"], record["failed_step"]) == ("rolled-back", "start"), record
    assert not notes_project.status()["slots"]["green"]["processes"]


def test_kill_9_mid_deploy_keeps_the_old_release_serving(notes_project: NotesProject) -> None:
    """A deploy killed while starting its release: v1 serves throughout; status cleans up; deploy works."""
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v2", "notes 2.0.0")
    process = notes_project.deploy_until_step("start")
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert notes_project.version() == "1.0.0"

    status = notes_project.lockstep("status")
    assert status.returncode == 0, status.err
    assert notes_project.agent_log is not None  # the agent may have cleaned up first
    assert "interrupted" in status.err + notes_project.agent_log.read_text()
    # The slots are shown as the clean-up left them: the interrupted release is not offered as
    # a warm rollback target.
    assert "slot green [warm" not in status.out, status.out
    document = notes_project.status()
    assert document["active_slot"] == "blue"
    assert not document["slots"]["green"]["processes"]  # the half-started release was stopped
    assert notes_project.history()[-1]["outcome"] == "interrupted"

    config = notes_project.directory / "lockstep.toml"
    event_log = notes_project.directory.parent / "events.jsonl"
    config.write_text(config.read_text() + f'[[notifications.channels]]\nkind = "event-log"\npath = "{event_log}"\n')
    notes_project.commit("log events")
    again = notes_project.lockstep("deploy")
    assert again.returncode == 0, again.err
    assert "stale lock" in again.err
    kinds = [json.loads(line)["kind"] for line in event_log.read_text().splitlines()]
    assert kinds[0] == "lock.broken" and "deploy.succeeded" in kinds
    assert notes_project.version() == "2.0.0"


def test_the_agent_not_running_is_a_clear_error(tmp_path: Path) -> None:
    """Deploying without an agent says how to start one, and changes nothing: a preflight
    refusal (exit 2)."""
    project = make_project(tmp_path)
    completed = project.lockstep("deploy")
    assert completed.returncode == 2
    assert "agent" in completed.err and "not running" in completed.err
    assert "lockstep agent" in completed.err
    assert project.history() == []


def test_the_app_outlives_the_agent_and_a_new_agent_adopts_it(notes_project: NotesProject) -> None:
    """Stopping the agent keeps serving; the next agent adopts the processes and restarts a dead one."""
    assert notes_project.lockstep("deploy").returncode == 0
    before = notes_project.status()["slots"]["blue"]["processes"]
    assert notes_project.agent is not None
    notes_project.agent.send_signal(signal.SIGTERM)
    notes_project.agent.wait(timeout=30)
    with NotesLoad(notes_project.listen_port) as load:
        time.sleep(1.0)
    assert load.report.failures == [] and load.report.requests > 10

    notes_project.start_agent()
    adopted = notes_project.status()["slots"]["blue"]["processes"]
    assert {item["pid"] for item in adopted} == {item["pid"] for item in before}
    web = next(item for item in adopted if item["component"] == "web")
    os.killpg(web["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = next(p for p in notes_project.status()["slots"]["blue"]["processes"] if p["component"] == "web")
        if current["pid"] != web["pid"] and current["running"]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the agent did not restart the killed web process")
    assert notes_project.version() == "1.0.0"


SECRET_PASSWORD = "pw-deploy-7c1e-never-shown"
SECRET_TOKEN = "tok-deploy-51aa-never-shown"


def test_secrets_never_leak_from_deploys_rollbacks_and_restores(tmp_path: Path) -> None:
    """Deploys, a failed deploy, a rollback, a restore, a verification and doctor, with known
    secrets in the environment: they appear in no output, no file written and no command line."""
    event_log = tmp_path / "events.jsonl"
    project = make_project(
        tmp_path,
        extra_deploy="hooks = { post-deploy = \"sh -c 'echo hook ran; env | grep -c LOCKSTEP_ >/dev/null'\" }",
        extra_config=(
            "[databases.shop]\n"
            'url = "postgresql://postgres@127.0.0.1:5432/postgres"\n'
            'password_env = "SHOP_DATABASE_PASSWORD"\n'
            "[[notifications.channels]]\n"
            'kind = "event-log"\n'
            f'path = "{event_log}"\n'
        ),
    )
    project.env.update({"SHOP_DATABASE_PASSWORD": SECRET_PASSWORD, "DEPLOY_API_TOKEN": SECRET_TOKEN})
    project.start_agent()
    outputs: list[str] = []
    command_lines: list[bytes] = []
    try:
        for arguments in (("deploy",), ("deploy", "--json"), ("status", "--json"), ("history", "--json")):
            completed = project.lockstep(*arguments)
            assert completed.returncode == 0, completed.err
            outputs += [completed.out, completed.err]
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    continue
        project.apply("v3-broken", "broken")
        failed = project.lockstep("deploy", "--log-format", "json")
        assert failed.returncode == 3
        outputs += [failed.out, failed.err]
        rollback = project.lockstep("rollback", "--yes")
        outputs += [rollback.out, rollback.err]
        for arguments in (
            ("snapshot", "list", "--json"),
            ("snapshot", "restore", "latest", "--database", "main", "--yes", "--json"),
            ("snapshot", "verify", "latest", "--level", "restore"),
            ("doctor", "--json"),
        ):
            completed = project.lockstep(*arguments)
            outputs += [completed.out, completed.err]
    finally:
        _stop_everything(project)
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert {"deploy.started", "deploy.succeeded", "deploy.rolled_back"} <= {event["kind"] for event in events}
    for secret in (SECRET_PASSWORD, SECRET_TOKEN, "correct horse battery staple"):
        for text in outputs:
            assert secret not in text
        for line in command_lines:
            assert secret.encode() not in line
        for path in tmp_path.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret.encode() not in path.read_bytes(), path


def test_a_failed_migration_that_prints_secrets_shows_none_of_them(tmp_path: Path) -> None:
    """A migration that prints every secret it can reach and fails: an environment token, a secret
    file's values, a secret-named `env` value from lockstep.toml. The step log, the error line,
    --json, the history, `status` and the notifications show none of them."""
    event_log = tmp_path / "events.jsonl"
    file_secret = "file-secret-93b1-never-shown"
    dotenv_secret = "dotenv-secret-44f0-never-shown"
    config_secret = "config-secret-e2d7-never-shown"
    project = make_project(
        tmp_path,
        extra_config=(
            "[files]\n"
            'secrets = ["secrets/*"]\n'
            "[app.components.worker.env]\n"
            f'PAYMENT_SECRET = "{config_secret}"\n'
            "[[notifications.channels]]\n"
            'kind = "event-log"\n'
            f'path = "{event_log}"\n'
        ),
    )
    secrets_directory = project.directory / "secrets"
    secrets_directory.mkdir()
    (secrets_directory / "app.key").write_text(file_secret + "\n")
    (secrets_directory / ".env").write_text(f"RAILS_ENV=production\nSTRIPE_KEY={dotenv_secret}\n")
    for path in secrets_directory.iterdir():
        path.chmod(0o600)
    with open(project.directory / ".gitignore", "a") as ignore:
        ignore.write("secrets/\n")
    project.commit("keep the secrets out of git")
    project.env["DEPLOY_API_TOKEN"] = SECRET_TOKEN
    project.start_agent()
    try:
        assert project.lockstep("deploy").returncode == 0
        (project.directory / "migrate.py").write_text(
            "import os, sys\n"
            "print('token', os.environ['DEPLOY_API_TOKEN'])\n"
            f"print(open({str(secrets_directory / 'app.key')!r}).read())\n"
            f"print(open({str(secrets_directory / '.env')!r}).read())\n"
            f"print('config', {config_secret!r})\n"
            "sys.exit(1)\n"
        )
        project.commit("a migration that talks too much")
        failed = project.lockstep("deploy", "--json", "--log-format", "json")
        assert failed.returncode == 3, failed.err
        assert "the migration failed" in failed.err
        assert json.loads(failed.out)["exit_code"] == 3
        outputs = [failed.out, failed.err]
        for arguments in (("history", "--json"), ("history",), ("status",), ("status", "--json")):
            completed = project.lockstep(*arguments)
            assert completed.returncode == 0, completed.err
            outputs += [completed.out, completed.err]
    finally:
        _stop_everything(project)
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert "deploy.rolled_back" in {event["kind"] for event in events}
    outputs.append(event_log.read_text())
    for secret in (SECRET_TOKEN, file_secret, dotenv_secret, config_secret):
        for text in outputs:
            assert secret not in text
    assert "production" in failed.err  # an ordinary value of a secret file is not masked


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_deploys_and_rollbacks_through_nginx_and_haproxy(tmp_path: Path, kind: str) -> None:
    """The same deploy and rollback with a real nginx or HAProxy as the switch: no failed request."""
    from tests.conftest import require_binary

    require_binary(kind, f"apt-get install {kind}")
    project = make_project(tmp_path, extra_config="")
    config = project.directory / "lockstep.toml"
    config.write_text(config.read_text().replace("[traffic]\n", f'[traffic]\nkind = "{kind}"\n'))
    project.commit("use a real proxy")
    project.start_agent()
    try:
        assert project.lockstep("deploy").returncode == 0
        (project.directory / "VERSION").write_text("1.1.0\n")
        project.commit("notes 1.1.0")
        with NotesLoad(project.listen_port) as load:
            time.sleep(0.5)
            deployed = project.lockstep("deploy")
            time.sleep(0.5)
            rolled_back = project.lockstep("rollback")
            time.sleep(0.5)
        assert deployed.returncode == 0, deployed.err
        assert rolled_back.returncode == 0, rolled_back.err
        assert load.report.failures == [], load.report.failures[:5]
        assert set(load.report.versions) == {"1.0.0", "1.1.0"}
        assert project.version() == "1.0.0"
        assert project.status()["traffic"]["kind"] == kind
    finally:
        _stop_everything(project)


def test_progress_is_one_json_event_per_step_with_deploy_id_and_env(notes_project: NotesProject) -> None:
    """Without a terminal: JSON lines on stderr, each step's outcome with deploy_id, env, duration."""
    completed = notes_project.lockstep("deploy", "--json")
    assert completed.returncode == 0, completed.err
    deploy_id = json.loads(completed.out)["id"]
    events = [json.loads(line) for line in completed.err.splitlines()]
    finished = [event for event in events if event["event"] == "step-finished"]
    assert [event["step"] for event in finished][-5:] == ["smoke", "pre-switch check", "switch", "watch", "retire"]
    assert all(event["env"] == "test" for event in finished)
    assert all(event["deploy_id"] == deploy_id for event in finished if event["step"] != "preflight")
    assert all(isinstance(event["duration"], float) for event in finished)
    (notes_project.directory / "VERSION").write_text("1.0.1\n")
    notes_project.commit("notes 1.0.1")
    assert notes_project.lockstep("deploy", "--quiet").returncode == 0
    quiet = notes_project.lockstep("rollback", "--quiet", "--log-format", "text")
    assert quiet.returncode == 0, quiet.err
    assert "→" not in quiet.err and "rolled back" in quiet.out


def test_a_failed_migration_on_postgresql_is_rolled_back_with_the_data(tmp_path: Path) -> None:
    """Migrations that change a PostgreSQL database and then fail: its data comes back exactly."""
    import uuid

    import psycopg

    from tests.conftest import require_binary

    require_binary("pg_dump", "apt-get install postgresql-client")
    name = f"lockstep_test_{uuid.uuid4().hex[:8]}"
    server = "postgresql://postgres@127.0.0.1:5432"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(f"{server}/{name}", autocommit=True) as connection:
            connection.execute("CREATE TABLE orders (id serial PRIMARY KEY, total numeric NOT NULL, note text)")
            connection.execute(
                "INSERT INTO orders (total, note) SELECT g * 1.5, 'order ' || g FROM generate_series(1, 500) g"
            )
        project = make_project(tmp_path, extra_config=f'[databases.shop]\nurl = "{server}/{name}"\n')
        migrate = project.directory / "migrate_shop.sh"
        migrate.write_text(
            "#!/bin/sh\nset -e\npython3 migrate.py\n"
            f"psql -q -v ON_ERROR_STOP=1 {server}/{name} -c 'UPDATE orders SET total = total * 100'\n"
            f"psql -q -v ON_ERROR_STOP=1 {server}/{name} -c 'ALTER TABLE orders ADD COLUMN currency text'\n"
            f"psql -q -v ON_ERROR_STOP=1 {server}/{name} -c 'ALTER TABLE orders ADD COLUMN broken no_such_type'\n"
        )
        migrate.chmod(0o755)
        config = project.directory / "lockstep.toml"
        config.write_text(config.read_text().replace('migrate = "python3 migrate.py"', 'migrate = "./migrate_shop.sh"'))
        project.commit("a migration that fails on PostgreSQL")
        project.start_agent()
        try:

            def orders() -> list[tuple[object, ...]]:
                with psycopg.connect(f"{server}/{name}") as connection:
                    columns = connection.execute(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' ORDER BY 1"
                    ).fetchall()
                    return [*columns, *connection.execute("SELECT * FROM orders ORDER BY id").fetchall()]

            before = orders()
            completed = project.lockstep("deploy")
            assert completed.returncode == 3, completed.err
            assert "migration failed" in completed.err and "no_such_type" in completed.err
            assert orders() == before
            record = project.history()[-1]
            assert record["failed_step"] == "migrate" and record["data_restored"]
        finally:
            _stop_everything(project)
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_rollback_of_one_component_leaves_the_others_on_their_release(notes_project: NotesProject) -> None:
    """--component worker replaces only the worker; --component web moves only the traffic."""
    assert notes_project.lockstep("deploy").returncode == 0
    first = notes_project.history()[-1]["release_id"]
    (notes_project.directory / "VERSION").write_text("1.1.0\n")
    notes_project.commit("notes 1.1.0")
    assert notes_project.lockstep("deploy").returncode == 0
    second = notes_project.history()[-1]["release_id"]

    def releases() -> dict[str, str]:
        status = notes_project.status()
        processes = status["slots"][status["active_slot"]]["processes"]
        return {process["component"]: process["release"] for process in processes if process["running"]}

    assert releases() == {"web": second, "worker": second}
    unknown = notes_project.lockstep("rollback", "--component", "nope")
    assert unknown.returncode == 2 and "web, worker" in unknown.err
    with_data = notes_project.lockstep("rollback", "--component", "worker", "--with-data")
    assert with_data.returncode == 2 and "--component" in with_data.err

    worker = notes_project.lockstep("rollback", "--component", "worker", "--json")
    assert worker.returncode == 0, worker.err
    assert json.loads(worker.out)["component"] == "worker"
    assert releases() == {"web": second, "worker": first}
    assert notes_project.version() == "1.1.0"
    status = notes_project.status()  # status said the worker ran the active slot's release
    assert status["release"] == second
    assert status["slots"][status["active_slot"]]["components"] == {"web": second, "worker": first}
    shown = notes_project.lockstep("status").out
    assert re.search(rf"worker pid \d+ on release {first}", shown), shown
    assert not re.search(r"web pid \d+ on release", shown), shown

    with NotesLoad(notes_project.listen_port) as load:
        time.sleep(0.3)
        web = notes_project.lockstep("rollback", "--component", "web")
        time.sleep(0.3)
    assert web.returncode == 0, web.err
    assert load.report.failures == []
    assert notes_project.version() == "1.0.0"
    history = notes_project.history()
    assert [item.get("component") for item in history[-2:]] == ["worker", "web"]


def test_a_release_whose_directory_is_gone_comes_back_from_its_code_snapshot(notes_project: NotesProject) -> None:
    """Rolling back two releases, to one whose release directory was deleted: restored from the
    pre-deploy snapshot that holds it, then started and switched to."""
    import shutil

    assert notes_project.lockstep("deploy").returncode == 0
    first = notes_project.history()[-1]["release_id"]
    for version in ("1.1.0", "1.2.0"):
        (notes_project.directory / "VERSION").write_text(version + "\n")
        notes_project.commit(f"notes {version}")
        assert notes_project.lockstep("deploy").returncode == 0
    before_second = notes_project.lockstep("snapshot", "show", notes_project.history()[1]["snapshot_id"], "--json")
    assert json.loads(before_second.out)["code"]["release"] == first, before_second.out
    releases = notes_project.directory / ".lockstep" / "state" / "test" / "releases"
    shutil.rmtree(releases / first)
    completed = notes_project.lockstep("rollback", "--to", first, "--log-format", "text")
    assert completed.returncode == 0, completed.err
    assert "restored it from snapshot" in completed.err
    assert notes_project.version() == "1.0.0"
    assert (releases / first / "app.py").exists()


def test_production_policy_asks_requires_the_snapshot_and_the_approval(tmp_path: Path) -> None:
    """In production: an approval command must pass, a deploy needs --yes without a terminal, and
    --skip-backup is refused; each refusal changes nothing."""
    project = make_project(tmp_path)
    config = project.directory / "lockstep.toml"
    text = config.read_text().replace('default_environment = "test"', 'default_environment = "production"')
    text = text.replace('[policy]\ndata_rollback = "auto"\n', "")
    approval = "[environments.production.policy]\napproval_command = \"sh -c 'echo checks pending; exit 1'\"\n"
    config.write_text(text + approval)
    project.commit("production")
    project.start_agent()
    try:
        refused = project.lockstep("deploy", "--yes")
        assert refused.returncode == 2, refused.err
        assert "approval command did not approve" in refused.err and "checks pending" in refused.err
        config.write_text(text)
        project.commit("approved")
        unconfirmed = project.lockstep("deploy")
        assert unconfirmed.returncode == 2 and "was not confirmed" in unconfirmed.err and "--yes" in unconfirmed.err
        # At a terminal, a wrong answer ("yes" where the environment's name is asked for) was told
        # to "answer the question on a terminal": the refusal says what the question wanted.
        script = require_binary("script", "apt-get install util-linux")
        answered = subprocess.run(
            [script, "-qec", f"{shlex.quote(sys.executable)} -m lockstep deploy", "/dev/null"],
            input=b"yes\n",
            capture_output=True,
            cwd=project.directory,
            env={**os.environ, **project.env},
            timeout=120,
            check=False,
        )
        output = answered.stdout.decode(errors="replace")
        assert answered.returncode == 2, output
        assert "Type 'production' to continue" in output
        assert "was not confirmed: confirm on a terminal by typing production, or pass --yes" in output
        skipping = project.lockstep("deploy", "--yes", "--skip-backup")
        assert skipping.returncode == 2 and "--skip-backup is not allowed in production" in skipping.err
        assert project.history() == []
        assert project.status()["active_slot"] is None
    finally:
        _stop_everything(project)


def test_a_first_deploy_that_fails_after_its_switch_is_undone_completely(tmp_path: Path) -> None:
    """Nothing served before: the failed release gives the traffic up and stops; exit 3, not 1."""
    project = _crashing_late(make_project(tmp_path, watch_seconds=12.0))
    for overlay in ("v2", "crash-loop"):
        shutil.copytree(NOTES / "demo" / overlay, project.directory, dirs_exist_ok=True)
    project.commit("notes 3.1.0 straight away")
    project.start_agent()
    try:
        completed = project.lockstep("deploy")
        assert completed.returncode == 3, completed.err
        assert "nothing was serving before" in completed.err
        status = project.status()
        assert status["active_slot"] is None
        assert all(not slot["processes"] for slot in status["slots"].values())
        assert project.history()[-1]["failed_step"] == "watch"
    finally:
        _stop_everything(project)
