"""The command itself: version, module entry point, help, and one exit path for errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lockstep import __version__
from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep


def test_version_from_the_module_entry_point() -> None:
    completed = run_lockstep(["--version"])
    assert completed.returncode == 0
    assert completed.out.strip() == f"lockstep {__version__}"


def test_console_script_is_installed_and_matches_the_module() -> None:
    script = Path(sys.executable).parent / "lockstep"
    command = [str(script)] if script.exists() else ["lockstep"]
    completed = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert __version__ in completed.stdout


def test_repo_help_lists_the_repository_verbs() -> None:
    completed = run_lockstep(["repo", "--help"])
    assert completed.returncode == 0
    for verb in (
        "init",
        "backup",
        "snapshots",
        "ls",
        "restore",
        "dump",
        "check",
        "forget",
        "prune",
        "key",
        "stats",
        "unlock",
    ):
        assert f"  {verb}" in completed.out, f"repo {verb} missing from help"


def test_unknown_option_is_a_usage_error_without_traceback() -> None:
    completed = run_lockstep(["repo", "snapshots", "--no-such-option"])
    assert completed.returncode == ExitCode.USAGE
    assert "Traceback" not in completed.err


def test_missing_repository_location_says_how_to_give_one(tmp_path: Path) -> None:
    completed = run_lockstep(
        ["repo", "snapshots"], env={"LOCKSTEP_REPOSITORY": "", "LOCKSTEP_PASSWORD": "x"}, cwd=tmp_path
    )
    assert completed.returncode == ExitCode.USAGE
    assert "LOCKSTEP_REPOSITORY" in completed.err
    assert "Traceback" not in completed.err


def test_json_errors_are_machine_readable(tmp_path: Path) -> None:
    completed = run_lockstep(
        ["repo", "snapshots", "--json", "-r", str(tmp_path / "nothing-here")], env={"LOCKSTEP_PASSWORD": "x"}
    )
    assert completed.returncode == ExitCode.NO_REPOSITORY
    document = json.loads(completed.out)
    assert document["exit_code"] == ExitCode.NO_REPOSITORY
    assert "lockstep repo init" in document["hint"]


def test_usage_errors_under_json_print_a_json_error(tmp_path: Path) -> None:
    """A script parsing --json output gets a document for a bad option or value too, not an empty
    stdout: the error, where the usage is explained, and the documented exit code."""
    cases = [
        (["snapshot", "list", "--json", "--no-such-option"], "lockstep snapshot list --help"),
        (["deploy", "--json", "--lock-wait", "soon"], "lockstep deploy --help"),
        (["--json", "repo", "snapshots", "--no-such-option"], "lockstep repo snapshots --help"),
        (["snapshot", "verify", "--json", "latest", "--level", "deep"], "lockstep snapshot verify --help"),
    ]
    for arguments, help_command in cases:
        completed = run_lockstep(arguments, cwd=tmp_path)
        assert completed.returncode == ExitCode.USAGE, arguments
        document = json.loads(completed.out)
        assert document["exit_code"] == ExitCode.USAGE
        assert document["error"]
        assert help_command in document["hint"]
        assert "Usage:" in completed.err  # people still get click's usage text on stderr


def _help_exit_codes(command: str) -> dict[int, str]:
    """The `Exit codes: 0 ...; 3 ...` paragraph of a command's --help, code by code."""
    import re

    completed = run_lockstep([command, "--help"])
    assert completed.returncode == 0, completed.err
    paragraphs = [" ".join(block.split()) for block in completed.out.split("\n\n")]
    paragraph = next(text for text in paragraphs if text.startswith("Exit codes:"))
    entries = paragraph.removeprefix("Exit codes:").split(";")
    return {int(match[1]): match[2] for match in (re.match(r"\s*(\d+) (.+)", entry) for entry in entries) if match}


def test_deploy_and_rollback_help_list_the_same_kinds_of_exit_codes() -> None:
    """`deploy --help` listed its exit codes and `rollback --help` none, though scripts branch on
    both alike: 3 when the failure was undone, 1 when it was not."""
    deploy = _help_exit_codes("deploy")
    rollback = _help_exit_codes("rollback")
    assert set(deploy) <= {int(code) for code in ExitCode} and set(rollback) <= {int(code) for code in ExitCode}
    shared = {ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.ROLLED_BACK, ExitCode.LOCKED}
    assert shared <= set(deploy) and shared <= set(rollback)
    assert "undone" in rollback[ExitCode.ROLLED_BACK] and "--to" in rollback[ExitCode.NOT_FOUND]


def _env_help(command: list[str]) -> str:
    """The --env paragraph of a command's --help, on one line."""
    completed = run_lockstep([*command, "--help"])
    assert completed.returncode == 0, completed.err
    words = " ".join(completed.out.split())
    start = words.index("--env NAME")
    return words[start : words.index(" -", start + len("--env NAME"))]


def test_every_snapshot_command_says_what_leaving_env_out_does() -> None:
    """Without --env list and forget cover every environment's snapshots, the others work on
    default_environment: --help said neither ("Environment from [environments.NAME]")."""
    for verb in ("create", "show", "verify", "diff", "restore"):
        assert "default: default_environment from lockstep.toml" in _env_help(["snapshot", verb]), verb
    for verb in ("list", "forget"):
        assert "default: every environment's snapshots in default_environment's repository" in _env_help(
            ["snapshot", verb]
        ), verb
