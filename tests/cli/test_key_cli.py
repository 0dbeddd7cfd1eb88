"""`lockstep repo key …` against the real restic: keys either tool adds open the repository in both."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, run_lockstep, run_restic

NEW_PASSWORD = "a new and different passphrase"


def init_repository(environment: dict[str, str]) -> None:
    result = run_lockstep(["repo", "init"], env=environment)
    assert result.returncode == 0, result.err


def password_file(directory: Path, password: str, name: str = "new-password") -> Path:
    path = directory / name
    path.write_text(password + "\n")
    return path


def key_files(environment: dict[str, str]) -> set[str]:
    return {path.name for path in (Path(environment["LOCKSTEP_REPOSITORY"]) / "keys").iterdir()}


def lockstep_keys(environment: dict[str, str], password: str = TEST_PASSWORD) -> list[dict[str, object]]:
    result = run_lockstep(["repo", "key", "list", "--json"], env={**environment, "LOCKSTEP_PASSWORD": password})
    assert result.returncode == 0, result.err
    keys: list[dict[str, object]] = json.loads(result.out)
    return keys


def restic_keys(environment: dict[str, str], password: str) -> list[dict[str, object]]:
    result = run_restic(environment["LOCKSTEP_REPOSITORY"], ["key", "list", "--json"], password=password)
    assert result.returncode == 0, result.err
    keys: list[dict[str, object]] = json.loads(result.out)
    return keys


def test_key_added_by_lockstep_opens_the_repository_in_restic(
    repository_env: dict[str, str], tmp_path: Path, restic_binary: str
) -> None:
    init_repository(repository_env)
    (tmp_path / "data.txt").write_text("payload\n")
    assert run_lockstep(["repo", "backup", str(tmp_path / "data.txt")], env=repository_env).returncode == 0

    added = run_lockstep(
        ["repo", "key", "add", "--new-password-file", str(password_file(tmp_path, NEW_PASSWORD)), "--json"],
        env=repository_env,
    )
    assert added.returncode == 0, added.err
    new_key_id = json.loads(added.out)["id"]
    assert len(new_key_id) == 64
    assert new_key_id in key_files(repository_env)

    snapshots = run_restic(repository_env["LOCKSTEP_REPOSITORY"], ["snapshots", "--json"], password=NEW_PASSWORD)
    assert snapshots.returncode == 0, snapshots.err
    assert len(json.loads(snapshots.out)) == 1
    current = [key["id"] for key in restic_keys(repository_env, NEW_PASSWORD) if key["current"]]
    assert current == [new_key_id[:8]]
    # The old password still works in both tools.
    assert run_restic(repository_env["LOCKSTEP_REPOSITORY"], ["snapshots"]).returncode == 0
    assert len(lockstep_keys(repository_env)) == 2


def test_key_added_by_restic_opens_the_repository_in_lockstep(
    repository_env: dict[str, str], tmp_path: Path, restic_binary: str
) -> None:
    init_repository(repository_env)
    before = key_files(repository_env)
    added = run_restic(
        repository_env["LOCKSTEP_REPOSITORY"],
        ["key", "add", "--new-password-file", str(password_file(tmp_path, NEW_PASSWORD))],
    )
    assert added.returncode == 0, added.err
    (restic_key_id,) = key_files(repository_env) - before

    keys = lockstep_keys(repository_env, password=NEW_PASSWORD)
    assert {str(key["id"]) for key in keys} == key_files(repository_env)
    assert [key["id"] for key in keys if key["current"]] == [restic_key_id]
    listing = run_lockstep(["repo", "key", "list"], env={**repository_env, "LOCKSTEP_PASSWORD": NEW_PASSWORD})
    assert listing.returncode == 0, listing.err
    assert f"*{restic_key_id[:8]}" in listing.out


def test_passwd_replaces_the_key_in_use(repository_env: dict[str, str], tmp_path: Path, restic_binary: str) -> None:
    init_repository(repository_env)
    old_keys = key_files(repository_env)

    changed = run_lockstep(
        ["repo", "key", "passwd", "--new-password-file", str(password_file(tmp_path, NEW_PASSWORD)), "--json"],
        env=repository_env,
    )
    assert changed.returncode == 0, changed.err
    document = json.loads(changed.out)
    assert {document["removed"]} == old_keys
    assert key_files(repository_env) == {document["id"]}

    old = run_lockstep(["repo", "key", "list"], env=repository_env)
    assert old.returncode == 11  # ExitCode.WRONG_PASSWORD: part of the API
    assert run_restic(repository_env["LOCKSTEP_REPOSITORY"], ["snapshots"]).returncode != 0
    assert [key["current"] for key in lockstep_keys(repository_env, password=NEW_PASSWORD)] == [True]
    assert run_restic(repository_env["LOCKSTEP_REPOSITORY"], ["snapshots"], password=NEW_PASSWORD).returncode == 0
    assert not list((Path(repository_env["LOCKSTEP_REPOSITORY"]) / "locks").iterdir())


def test_removing_keys_refuses_the_current_one_and_ambiguous_prefixes(
    repository_env: dict[str, str], tmp_path: Path
) -> None:
    init_repository(repository_env)
    (current_id,) = key_files(repository_env)
    refused = run_lockstep(["repo", "key", "remove", current_id[:8]], env=repository_env)
    assert refused.returncode == ExitCode.USAGE
    assert "refusing to remove key" in refused.err
    assert key_files(repository_env) == {current_id}

    # Add keys until two of them share a first hex digit: that one digit is then ambiguous.
    new_password = password_file(tmp_path, NEW_PASSWORD)
    while len({name[0] for name in key_files(repository_env)}) == len(key_files(repository_env)):
        added = run_lockstep(["repo", "key", "add", "--new-password-file", str(new_password)], env=repository_env)
        assert added.returncode == 0, added.err
    names = key_files(repository_env)
    shared_digit = next(digit for digit in {name[0] for name in names} if sum(n[0] == digit for n in names) > 1)
    ambiguous = run_lockstep(["repo", "key", "remove", shared_digit], env=repository_env)
    assert ambiguous.returncode == ExitCode.NOT_FOUND
    assert "give more characters" in ambiguous.err
    assert key_files(repository_env) == names

    victim = next(name for name in names if name != current_id)
    removed = run_lockstep(["repo", "key", "remove", victim[:12]], env=repository_env)
    assert removed.returncode == 0, removed.err
    assert key_files(repository_env) == names - {victim}
    missing = run_lockstep(["repo", "key", "remove", victim[:12]], env=repository_env)
    assert missing.returncode == ExitCode.NOT_FOUND


def test_wrong_password_exits_11_without_echoing_it(repository_env: dict[str, str]) -> None:
    init_repository(repository_env)
    secret = "hunter2-never-print-me"
    for command in (["list"], ["remove", "abcd"], ["add", "--new-password-file", "/nonexistent"]):
        result = run_lockstep(["repo", "key", *command], env={**repository_env, "LOCKSTEP_PASSWORD": secret})
        assert result.returncode == ExitCode.WRONG_PASSWORD, (command, result.err)
        assert "wrong password" in result.err
        assert secret not in result.err and secret not in result.out


def test_repository_with_restic_scrypt_parameters_opens(
    tmp_path: Path, restic_binary: str, repository_env: dict[str, str]
) -> None:
    """restic calibrates scrypt itself (much costlier than our test setting); lockstep must follow them."""
    repository = repository_env["LOCKSTEP_REPOSITORY"]
    created = run_restic(repository, ["init"])
    assert created.returncode == 0, created.err
    (restic_key,) = key_files(repository_env)
    document = json.loads((Path(repository) / "keys" / restic_key).read_bytes())
    assert document["N"] != 1024  # restic's own choice, not the tests' fast setting

    keys = lockstep_keys(repository_env)
    assert [(key["id"], key["current"]) for key in keys] == [(restic_key, True)]
    added = run_lockstep(
        ["repo", "key", "add", "--new-password-file", str(password_file(tmp_path, NEW_PASSWORD))], env=repository_env
    )
    assert added.returncode == 0, added.err
    assert run_restic(repository, ["snapshots"], password=NEW_PASSWORD).returncode == 0


def test_add_without_a_terminal_or_file_is_a_usage_error(repository_env: dict[str, str]) -> None:
    init_repository(repository_env)
    before = key_files(repository_env)
    result = run_lockstep(["repo", "key", "add"], env=repository_env, input=b"typed\ntyped\n")
    assert result.returncode == ExitCode.USAGE
    assert "--new-password-file" in result.err
    assert key_files(repository_env) == before


def _read_until(descriptor: int, wanted: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {wanted!r} in {bytes(seen)!r}"
        readable, _, _ = select.select([descriptor], [], [], remaining)
        if readable:
            try:
                chunk = os.read(descriptor, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {wanted!r}; saw {bytes(seen)!r}"
            seen.extend(chunk)


def test_add_prompts_twice_on_a_terminal(repository_env: dict[str, str]) -> None:
    """On a TTY the new password is typed twice, hidden; it never appears on the command line."""
    init_repository(repository_env)
    primary, secondary = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "repo", "key", "add"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, **repository_env},
        start_new_session=True,
    )
    os.close(secondary)
    seen = bytearray()
    try:
        _read_until(primary, b"new password", seen)
        os.write(primary, NEW_PASSWORD.encode() + b"\n")
        _read_until(primary, b"again", seen)
        os.write(primary, NEW_PASSWORD.encode() + b"\n")
        _read_until(primary, b"saved new key", seen)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)
    assert NEW_PASSWORD.encode() not in seen  # hidden input: no echo
    assert len(lockstep_keys(repository_env, password=NEW_PASSWORD)) == 2
