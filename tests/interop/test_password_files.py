"""The same --password-file or --password-command opens a repository in lockstep and in restic.

restic strips a byte order mark and all surrounding white space (Go's strings.TrimSpace) from a
password file and a password command's output; lockstep used to strip only the line ending, so a
password file with a trailing space or tab (or a BOM, as Windows editors write) gave the two tools
different passwords: restic could not open what lockstep created, nor lockstep what restic did.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep, run_restic

pytestmark = pytest.mark.usefixtures("restic_binary")

AWKWARD_FILES = {
    "trailing-space-and-tab": b"pass word \t\n",
    "leading-space-crlf": b"  pass word\r\n",
    "utf8-bom": b"\xef\xbb\xbfpass word\n",
    "not-utf8": b"caf\xe9 word \n",
}


def lockstep_env(repository: Path) -> dict[str, str]:
    return {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": "", "LOCKSTEP_PASSWORD_FILE": ""}


def restic_env() -> dict[str, str]:
    return {"RESTIC_PASSWORD": "", "RESTIC_PASSWORD_FILE": ""}


def sources(password_file: Path, content: bytes) -> list[list[str]]:
    """The file, and a command printing it (restic drops a BOM from files only)."""
    arguments = [["--password-file", str(password_file)]]
    if not content.startswith(b"\xef\xbb\xbf"):
        arguments.append(["--password-command", f"cat {password_file}"])
    return arguments


@pytest.mark.parametrize("content", AWKWARD_FILES.values(), ids=AWKWARD_FILES.keys())
def test_one_password_file_opens_the_repository_in_both_tools(content: bytes, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_bytes(content)

    by_lockstep = tmp_path / "by-lockstep"
    created = run_lockstep(["repo", "init", "--password-file", str(password_file)], env=lockstep_env(by_lockstep))
    assert created.returncode == 0, created.err
    for arguments in sources(password_file, content):
        opened = run_restic(str(by_lockstep), [*arguments, "snapshots"], password="", env=restic_env())
        assert opened.returncode == 0, (arguments, opened.err)

    by_restic = tmp_path / "by-restic"
    initialised = run_restic(str(by_restic), ["init", "--password-file", str(password_file)], env=restic_env())
    assert initialised.returncode == 0, initialised.err
    for arguments in sources(password_file, content):
        listed = run_lockstep(["repo", "snapshots", *arguments], env=lockstep_env(by_restic))
        assert listed.returncode == 0, (arguments, listed.err)


def test_a_new_password_file_gives_a_key_restic_opens_with_that_file(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    environment = {**lockstep_env(repository), "LOCKSTEP_PASSWORD": "old password"}
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    new_password_file = tmp_path / "new-password"
    new_password_file.write_bytes(b"new password \t\n")
    changed = run_lockstep(["repo", "key", "passwd", "--new-password-file", str(new_password_file)], env=environment)
    assert changed.returncode == 0, changed.err
    opened = run_restic(str(repository), ["--password-file", str(new_password_file), "snapshots"], env=restic_env())
    assert opened.returncode == 0, opened.err


def test_a_repository_created_with_the_untrimmed_password_still_opens(tmp_path: Path) -> None:
    """Earlier lockstep kept the spaces: the key made from the file's line as it was must keep
    working with that file, and a wrong password is still refused."""
    repository = tmp_path / "repository"
    environment = {**lockstep_env(repository), "LOCKSTEP_PASSWORD": " pass word \t"}
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    password_file = tmp_path / "password"
    password_file.write_bytes(b" pass word \t\n")
    listed = run_lockstep(["repo", "snapshots", "--password-file", str(password_file)], env=lockstep_env(repository))
    assert listed.returncode == 0, listed.err
    password_file.write_bytes(b" pass word? \t\n")
    refused = run_lockstep(["repo", "snapshots", "--password-file", str(password_file)], env=lockstep_env(repository))
    assert refused.returncode == ExitCode.WRONG_PASSWORD, refused.err
