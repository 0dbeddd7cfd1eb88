"""Where the repository password comes from, in the order restic uses (internal/global/global.go,
resolvePassword): a password file (--password-file, else $LOCKSTEP_PASSWORD_FILE) or a password
command (--password-command, else $LOCKSTEP_PASSWORD_COMMAND), never both, and only without either
$LOCKSTEP_PASSWORD. lockstep.toml's password_file/password_command come after the flags and the
FILE/COMMAND variables, and before $LOCKSTEP_PASSWORD.

lockstep used to let $LOCKSTEP_PASSWORD win over $LOCKSTEP_PASSWORD_FILE and over the config's
password_file/password_command, had no $LOCKSTEP_PASSWORD_COMMAND, and took the file silently
when a file and a command were both given: the same environment opened a repository with
another password in lockstep than in restic.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, run_lockstep
from tests.faults import assert_clean_error

WRONG = "not-the-password-7c1e"
COMMAND_SECRET = "command-output-NEVER-SHOWN-93ad"


def clean_env(repository: Path, **variables: str) -> dict[str, str]:
    """No password source from the test runner's own environment, then `variables`."""
    base = {
        "LOCKSTEP_REPOSITORY": str(repository),
        "LOCKSTEP_PASSWORD": "",
        "LOCKSTEP_PASSWORD_FILE": "",
        "LOCKSTEP_PASSWORD_COMMAND": "",
    }
    return {**base, **variables}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    location = tmp_path / "repository"
    created = run_lockstep(["repo", "init"], env=clean_env(location, LOCKSTEP_PASSWORD=TEST_PASSWORD))
    assert created.returncode == 0, created.err
    return location


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(TEST_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def test_a_password_file_variable_wins_over_lockstep_password(repository: Path, password_file: Path) -> None:
    environment = clean_env(repository, LOCKSTEP_PASSWORD=WRONG, LOCKSTEP_PASSWORD_FILE=str(password_file))
    result = run_lockstep(["repo", "snapshots"], env=environment)
    assert result.returncode == 0, result.err


def test_the_password_command_variable_is_read_and_wins_over_lockstep_password(
    repository: Path, password_file: Path
) -> None:
    environment = clean_env(repository, LOCKSTEP_PASSWORD=WRONG, LOCKSTEP_PASSWORD_COMMAND=f"cat {password_file}")
    result = run_lockstep(["repo", "snapshots"], env=environment)
    assert result.returncode == 0, result.err
    alone = clean_env(repository, LOCKSTEP_PASSWORD_COMMAND=f"cat {password_file}")
    assert run_lockstep(["repo", "snapshots"], env=alone).returncode == 0


def test_a_flag_replaces_its_own_variable(repository: Path, password_file: Path, tmp_path: Path) -> None:
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text(WRONG)
    environment = clean_env(repository, LOCKSTEP_PASSWORD_FILE=str(wrong_file))
    result = run_lockstep(["repo", "snapshots", "--password-file", str(password_file)], env=environment)
    assert result.returncode == 0, result.err
    environment = clean_env(repository, LOCKSTEP_PASSWORD_COMMAND=f"cat {wrong_file}")
    result = run_lockstep(["repo", "snapshots", "--password-command", f"cat {password_file}"], env=environment)
    assert result.returncode == 0, result.err


@pytest.mark.parametrize(
    ("arguments", "variables"),
    [
        (["--password-file", "FILE", "--password-command", "cat FILE"], {}),
        (["--password-file", "FILE"], {"LOCKSTEP_PASSWORD_COMMAND": "cat FILE"}),
        ([], {"LOCKSTEP_PASSWORD_FILE": "FILE", "LOCKSTEP_PASSWORD_COMMAND": "cat FILE"}),
    ],
    ids=["both-flags", "file-flag-command-variable", "both-variables"],
)
def test_a_file_and_a_command_together_are_refused(
    repository: Path, password_file: Path, arguments: list[str], variables: dict[str, str]
) -> None:
    """As restic: "Password file and command are mutually exclusive options" (exit 2)."""
    arguments = [argument.replace("FILE", str(password_file)) for argument in arguments]
    variables = {name: value.replace("FILE", str(password_file)) for name, value in variables.items()}
    result = run_lockstep(["repo", "snapshots", *arguments], env=clean_env(repository, **variables))
    line = assert_clean_error(result, ExitCode.USAGE, "mutually exclusive")
    assert "password file" in line and "password command" in line


def test_a_failing_command_says_so_without_showing_its_output(repository: Path) -> None:
    command = f"sh -c 'echo {COMMAND_SECRET}; echo vault is sealed >&2; exit 3'"
    result = run_lockstep(["repo", "snapshots"], env=clean_env(repository, LOCKSTEP_PASSWORD_COMMAND=command))
    line = assert_clean_error(result, ExitCode.USAGE, "LOCKSTEP_PASSWORD_COMMAND", "code 3")
    assert "vault is sealed" in line  # its stderr is the diagnosis
    assert COMMAND_SECRET not in result.out + result.err


def test_children_do_not_inherit_the_password_file_or_command(repository: Path, password_file: Path) -> None:
    """A backup source such as `env` must not learn how to get the password either."""
    environment = clean_env(repository, LOCKSTEP_PASSWORD_COMMAND=f"cat {password_file}")
    backup = run_lockstep(
        ["repo", "backup", "--stdin-from-command", "--stdin-filename", "env.txt", "--", "env"], env=environment
    )
    assert backup.returncode == 0, backup.err
    dumped = run_lockstep(["repo", "dump", "latest", "/env.txt"], env=environment)
    assert dumped.returncode == 0, dumped.err
    assert b"PATH=" in dumped.stdout
    assert b"LOCKSTEP_PASSWORD" not in dumped.stdout


def write_project(directory: Path, repository: Path, password_line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "lockstep.toml"
    config.write_text(f'[repository]\nurl = "{repository}"\n{password_line}\n')
    return config


def test_the_configs_password_command_wins_over_lockstep_password_and_runs_in_the_configs_directory(
    repository: Path, password_file: Path, tmp_path: Path
) -> None:
    """From another working directory (cron), `cat password` names the file next to lockstep.toml."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "password").write_text(TEST_PASSWORD + "\n")
    config = write_project(project, repository, 'password_command = "cat password"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**clean_env(repository, LOCKSTEP_PASSWORD=WRONG), "LOCKSTEP_REPOSITORY": ""}
    result = run_lockstep(["snapshot", "list", "-c", str(config)], env=environment, cwd=elsewhere)
    assert result.returncode == 0, result.err


def test_the_password_file_variable_overrides_the_configs_command(
    repository: Path, password_file: Path, tmp_path: Path
) -> None:
    config = write_project(tmp_path / "project", repository, 'password_command = "false"')
    environment = {**clean_env(repository, LOCKSTEP_PASSWORD_FILE=str(password_file)), "LOCKSTEP_REPOSITORY": ""}
    result = run_lockstep(["snapshot", "list", "-c", str(config)], env=environment)
    assert result.returncode == 0, result.err
    for command in (["repo", "snapshots", "-c", str(config)], ["doctor", "-c", str(config), "--json"]):
        result = run_lockstep(command, env={**environment, "LOCKSTEP_PASSWORD_FILE": ""})
        assert result.returncode != 0
        assert "repository.password_command" in result.out + result.err


def test_the_missing_password_hint_names_only_options_the_command_has(repository: Path, tmp_path: Path) -> None:
    """Project commands (status, snapshot create/list) have no --password-file/--password-command:
    their hint names the variables and lockstep.toml's keys; `repo` commands keep naming the flags."""
    project = tmp_path / "shop"
    project.mkdir()
    (project / "lockstep.toml").write_text(f'[repository]\nurl = "{repository}"\n')
    environment = clean_env(repository)
    del environment["LOCKSTEP_REPOSITORY"]
    status = run_lockstep(["status"], env=environment, cwd=project)  # says so, and shows the rest
    assert status.returncode == 0, status.err
    for command in (["snapshot", "list"], ["snapshot", "create"]):
        result = run_lockstep(command, env=environment, cwd=project)
        assert_clean_error(result, ExitCode.USAGE, "no repository password")
    for text in (run_lockstep(["snapshot", "list"], env=environment, cwd=project).err, status.out):
        assert "no repository password" in text, text
        assert "--password-file" not in text and "--password-command" not in text, text
        for named in ("LOCKSTEP_PASSWORD,", "LOCKSTEP_PASSWORD_FILE", "LOCKSTEP_PASSWORD_COMMAND"):
            assert named in text, text
        assert "repository.password_file or repository.password_command in lockstep.toml" in text
    repo = run_lockstep(["repo", "snapshots"], env=environment, cwd=project)
    assert_clean_error(repo, ExitCode.USAGE, "no repository password")
    assert "--password-file FILE or --password-command CMD" in repo.err
