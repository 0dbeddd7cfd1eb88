"""`lockstep repo restore` tells what it could not restore: once per problem for a person, every
path for a program (--json)."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

from lockstep.repository.restore_warnings import RestoreWarning, summarise_warnings
from tests.conftest import run_lockstep


def test_the_same_problem_on_many_files_is_one_line() -> None:
    warnings = [
        RestoreWarning(
            "cannot set owner (Operation not permitted)", f"cannot set owner of /r/{name}: ...", f"/r/{name}"
        )
        for name in ("a", "b", "c")
    ]
    unsupported = "the file system under /r does not support extended attributes; they were not restored"
    warnings.append(RestoreWarning(unsupported, unsupported))
    warnings.append(RestoreWarning("skipped socket", "skipped socket /r/s.sock", "/r/s.sock"))
    assert summarise_warnings(warnings) == [
        "cannot set owner (Operation not permitted) on 3 files (first: /r/a)",
        unsupported,
        "skipped socket /r/s.sock",
    ]


def test_skipped_sockets_are_said_once_and_listed_in_json(repository_env: dict[str, str], tmp_path: Path) -> None:
    """A line per skipped file buried the one thing to know among hundreds of lines."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("notes\n")
    with contextlib.chdir(source):  # relative names: tmp_path can be too long for a socket address
        for name in ("a.sock", "b.sock", "c.sock"):
            with socket.socket(socket.AF_UNIX) as listening:
                listening.bind(name)
    assert run_lockstep(["repo", "init"], env=repository_env).returncode == 0
    backed_up = run_lockstep(["repo", "backup", str(source)], env=repository_env)
    assert backed_up.returncode == 0, backed_up.err

    human = run_lockstep(["repo", "restore", "latest", "--target", str(tmp_path / "one")], env=repository_env)
    assert human.returncode == 0, human.err
    first = tmp_path / "one" / str(source).lstrip("/") / "a.sock"
    assert [line for line in human.out.splitlines() if line.startswith("warning:")] == [
        f"warning: skipped socket on 3 files (first: {first})"
    ]
    as_json = run_lockstep(
        ["repo", "restore", "latest", "--target", str(tmp_path / "two"), "--json"], env=repository_env
    )
    warnings = json.loads(as_json.out)["warnings"]
    assert len(warnings) == 3 and all(warning.startswith("skipped socket ") for warning in warnings), warnings
