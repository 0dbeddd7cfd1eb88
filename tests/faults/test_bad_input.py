"""Bad input to the repository commands: each mistake gets its documented exit code, one line on
stderr that says what to do, no traceback, and nothing half-written in the repository."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from lockstep.storage.s3 import parse_location
from tests.conftest import TEST_PASSWORD, require_binary, run_lockstep, run_restic
from tests.faults import assert_clean_error, repository_files, tmpfs
from tests.s3_server import free_port


@pytest.fixture(scope="module")
def module_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one snapshot of a small tree, shared by the read-only checks below."""
    base = tmp_path_factory.mktemp("bad-input")
    source = base / "source"
    (source / "sub").mkdir(parents=True)
    (source / "hello.txt").write_text("hello\n")
    (source / "sub" / "data.bin").write_bytes(os.urandom(200_000))
    repository = base / "repository"
    environment = {"LOCKSTEP_PASSWORD": TEST_PASSWORD}
    assert run_lockstep(["repo", "init", "--repo", str(repository)], env=environment).returncode == 0
    backup = run_lockstep(["repo", "backup", "--repo", str(repository), str(source)], env=environment)
    assert backup.returncode == 0, backup.err
    return repository


@pytest.fixture
def repository(module_repository: Path) -> Iterator[Path]:
    """The shared repository; every test must leave its files exactly as they were."""
    before = repository_files(module_repository)
    yield module_repository
    assert repository_files(module_repository) == before, "a failed command changed the repository"


def env_for(repository: Path, password: str | None = TEST_PASSWORD) -> dict[str, str]:
    environment = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": password or ""}
    environment["LOCKSTEP_PASSWORD_FILE"] = ""
    return environment


# --- opening the repository -------------------------------------------------------------------


def test_wrong_password_exits_11_and_names_the_password_sources(repository: Path, tmp_path: Path) -> None:
    target = str(tmp_path / "out")
    for arguments in (
        ["repo", "snapshots"],
        ["repo", "backup", "--stdin"],
        ["repo", "restore", "latest", "-t", target],
    ):
        result = run_lockstep(arguments, env=env_for(repository, "not the password"), input=b"data")
        assert_clean_error(result, ExitCode.WRONG_PASSWORD, "wrong password", "LOCKSTEP_PASSWORD")


def test_no_repository_at_the_path_exits_10_and_suggests_init(tmp_path: Path) -> None:
    location = tmp_path / "nothing-here"
    result = run_lockstep(["repo", "snapshots"], env=env_for(location))
    assert_clean_error(result, ExitCode.NO_REPOSITORY, "no repository", "lockstep repo init")
    backup = run_lockstep(["repo", "backup", "--stdin"], env=env_for(location), input=b"data")
    assert_clean_error(backup, ExitCode.NO_REPOSITORY, "lockstep repo init")
    assert not location.exists(), "a failed open created the repository directory"


def test_a_directory_that_is_not_a_repository_exits_10_and_is_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "photos"
    directory.mkdir()
    (directory / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = repository_files(directory)
    for arguments in (["repo", "snapshots"], ["repo", "backup", str(directory / "cat.jpg")], ["repo", "unlock"]):
        result = run_lockstep(arguments, env=env_for(directory))
        assert_clean_error(result, ExitCode.NO_REPOSITORY, "no repository", "lockstep repo init")
    assert repository_files(directory) == before


def test_init_where_a_repository_exists_is_refused_and_the_repository_still_opens(repository: Path) -> None:
    """Refused with exit 1, as `restic init` refuses ("config file already exists", exit 1): it
    exited 14 (storage failed: full, unreachable, no permission), sending people after a storage
    fault that was not there. The error says what to do instead."""
    for password in (TEST_PASSWORD, "a different password"):
        result = run_lockstep(["repo", "init"], env=env_for(repository, password))
        assert_clean_error(result, ExitCode.FAILED, "already exists", "choose another location")
    as_json = run_lockstep(["repo", "init", "--json"], env=env_for(repository))
    assert as_json.returncode == ExitCode.FAILED and "already exists" in as_json.out + as_json.err
    require_binary("restic", "apt-get install restic")
    assert run_restic(str(repository), ["init"]).returncode == ExitCode.FAILED
    snapshots = run_lockstep(["repo", "snapshots", "--json"], env=env_for(repository))
    assert snapshots.returncode == 0, snapshots.err
    assert snapshots.out.count('"short_id"') == 1
    assert run_lockstep(["repo", "snapshots"], env=env_for(repository, "a different password")).returncode == 11


def test_no_password_at_all_exits_2_and_suggests_lockstep_password(repository: Path) -> None:
    environment = {**env_for(repository, None)}
    result = run_lockstep(["repo", "snapshots"], env=environment)
    assert_clean_error(result, ExitCode.USAGE, "no repository password", "LOCKSTEP_PASSWORD")


def test_missing_password_file_exits_2_naming_the_file(repository: Path, tmp_path: Path) -> None:
    absent = tmp_path / "absent-password-file"
    result = run_lockstep(["repo", "snapshots", "--password-file", str(absent)], env=env_for(repository, None))
    line = assert_clean_error(result, ExitCode.USAGE, str(absent), "password file")
    assert "--password-file" in line or "create" in line.lower(), f"no advice in {line!r}"


def test_failing_password_command_exits_2_and_says_to_fix_it(repository: Path) -> None:
    for command in ("sh -c 'echo oops >&2; exit 7'", "lockstep-no-such-password-helper"):
        result = run_lockstep(["repo", "snapshots", "--password-command", command], env=env_for(repository, None))
        assert_clean_error(result, ExitCode.USAGE, "--password-command")


def test_password_command_that_prints_nothing_exits_2(repository: Path) -> None:
    result = run_lockstep(["repo", "snapshots", "--password-command", "true"], env=env_for(repository, None))
    assert_clean_error(result, ExitCode.USAGE, "no repository password")


def test_an_empty_password_source_is_named_whole_and_the_hint_fixes_that_source(
    repository: Path, tmp_path: Path
) -> None:
    """The error used to read "no repository password: *** password file ... is empty": the
    redactor took "password: the" for an assignment and masked "the". Its hint said to set
    LOCKSTEP_PASSWORD, which a password file or command in use keeps from being read."""
    empty_file = tmp_path / "empty-password"
    empty_file.write_text(" \n")
    file_variable = {**env_for(repository, None), "LOCKSTEP_PASSWORD_FILE": str(empty_file)}
    command_variable = {**env_for(repository, None), "LOCKSTEP_PASSWORD_COMMAND": "true"}
    for environment, phrases in (
        (file_variable, ("the password file", str(empty_file), "is empty", f"write the password into {empty_file}")),
        (command_variable, ("the password command", "printed nothing", "make the command print the password")),
    ):
        for command in (["repo", "snapshots"], ["--json", "repo", "snapshots"]):
            result = run_lockstep(command, env=environment)
            line = assert_clean_error(result, ExitCode.USAGE, "no repository password", *phrases)
            assert "***" not in line and "***" not in result.out, (line, result.out)
            assert "set LOCKSTEP_PASSWORD" not in line, line


def test_unknown_scheme_in_repo_exits_2(tmp_path: Path) -> None:
    for location in ("ftp://example.invalid/backups", "sftp:user@host:/srv/repo"):
        result = run_lockstep(["repo", "snapshots", "--repo", location], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD})
        assert_clean_error(result, ExitCode.USAGE, "scheme", "s3:")


def test_no_repository_given_exits_2() -> None:
    result = run_lockstep(["repo", "snapshots"], env={"LOCKSTEP_REPOSITORY": "", "LOCKSTEP_PASSWORD": TEST_PASSWORD})
    assert_clean_error(result, ExitCode.USAGE, "LOCKSTEP_REPOSITORY")


def test_unreachable_s3_endpoint_exits_14_quickly() -> None:
    port = free_port()  # nothing listens here: connections are refused
    environment = {
        "LOCKSTEP_REPOSITORY": f"s3:http://127.0.0.1:{port}/lockstep-bucket/repo",
        "LOCKSTEP_PASSWORD": TEST_PASSWORD,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for arguments in (["repo", "snapshots"], ["repo", "init"]):
        started = time.monotonic()
        result = run_lockstep(arguments, env=environment, timeout=60)
        elapsed = time.monotonic() - started
        assert_clean_error(result, ExitCode.STORAGE, f"127.0.0.1:{port}")
        assert elapsed < 20, f"giving up on a refused connection took {elapsed:.1f} s"


# --- backup sources -----------------------------------------------------------------------------


def test_stdin_command_that_fails_exits_15_and_leaves_no_snapshot_or_packs(repository: Path) -> None:
    # Enough output that packs are written and uploaded before the command fails.
    failing = "head -c 40000000 /dev/urandom; echo 'pg_dump: connection lost' >&2; exit 3"
    result = run_lockstep(
        ["repo", "backup", "--stdin-from-command", "--", "sh", "-c", failing], env=env_for(repository)
    )
    assert_clean_error(result, ExitCode.SOURCE, "exited with code 3", "no snapshot", "connection lost")
    # The `repository` fixture asserts no pack, index, snapshot, lock or temporary file remains.


def test_stdin_command_that_is_killed_or_missing_exits_15(repository: Path) -> None:
    killed = run_lockstep(
        ["repo", "backup", "--stdin-from-command", "--", "sh", "-c", "echo partial; kill -9 $$"],
        env=env_for(repository),
    )
    assert_clean_error(killed, ExitCode.SOURCE, "signal 9", "no snapshot")
    absent = run_lockstep(
        ["repo", "backup", "--stdin-from-command", "--", "lockstep-no-such-dump-tool"], env=env_for(repository)
    )
    assert_clean_error(absent, ExitCode.SOURCE, "command not found", "lockstep-no-such-dump-tool")


def test_empty_stream_exits_15(repository: Path) -> None:
    piped = run_lockstep(["repo", "backup", "--stdin"], env=env_for(repository), input=b"")
    assert_clean_error(piped, ExitCode.SOURCE, "empty", "no snapshot")
    command = run_lockstep(["repo", "backup", "--stdin-from-command", "--", "true"], env=env_for(repository))
    assert_clean_error(command, ExitCode.SOURCE, "empty", "no snapshot")


def test_nonexistent_backup_path_exits_15(repository: Path, tmp_path: Path) -> None:
    present = tmp_path / "present.txt"
    present.write_text("here\n")
    absent = tmp_path / "absent"
    result = run_lockstep(["repo", "backup", str(present), str(absent)], env=env_for(repository))
    assert_clean_error(result, ExitCode.SOURCE, str(absent), "does not exist")


# --- snapshot references ------------------------------------------------------------------------


def test_snapshot_prefix_that_matches_nothing_exits_13(repository: Path, tmp_path: Path) -> None:
    for arguments in (["repo", "restore", "0000000000", "-t", str(tmp_path / "out")], ["repo", "ls", "0000000000"]):
        result = run_lockstep(arguments, env=env_for(repository))
        assert_clean_error(result, ExitCode.NOT_FOUND, "no snapshot matches", "lockstep repo snapshots")
    assert not (tmp_path / "out").exists(), "restore created its target before finding the snapshot"


def test_snapshot_prefix_that_matches_several_exits_13_listing_candidates(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    assert run_lockstep(["repo", "init"], env=env_for(repository)).returncode == 0
    assert run_lockstep(["repo", "backup", "--stdin"], env=env_for(repository), input=b"one\n").returncode == 0
    # 17 snapshots share 16 possible first hex digits, so at least two share a prefix.
    opened = Repository.open(LocalBackend(repository), TEST_PASSWORD)
    try:
        original = opened.list_snapshots()[0]
        for number in range(16):
            original.tags = [f"copy-{number}"]
            opened.save_snapshot(original)
        by_first_digit: dict[str, list[str]] = {}
        for snapshot in opened.list_snapshots():
            by_first_digit.setdefault(snapshot.id[0], []).append(snapshot.short_id)
    finally:
        opened.close()
    prefix, candidates = max(by_first_digit.items(), key=lambda item: len(item[1]))
    assert len(candidates) >= 2
    result = run_lockstep(["repo", "restore", prefix, "-t", str(tmp_path / "out")], env=env_for(repository))
    line = assert_clean_error(result, ExitCode.NOT_FOUND, f"matches {len(candidates)} snapshots", "more characters")
    for short_id in candidates[:5]:
        assert short_id in line
    assert not (tmp_path / "out").exists()


def test_latest_in_an_empty_repository_exits_13(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    assert run_lockstep(["repo", "init"], env=env_for(repository)).returncode == 0
    result = run_lockstep(["repo", "restore", "latest", "-t", str(tmp_path / "out")], env=env_for(repository))
    assert_clean_error(result, ExitCode.NOT_FOUND, "no snapshots")


def test_restore_include_that_matches_nothing_exits_13_and_restores_nothing(repository: Path, tmp_path: Path) -> None:
    """restic restores nothing and exits 0 for an --include that matches nothing: a typo passed for
    a restore. lockstep names the includes that match nothing and the snapshot, and restores
    nothing (not even the target), also when another include matches."""
    source = os.fsdecode(repository.parent / "source")
    target = tmp_path / "out"
    for includes, named in (
        ([f"{source}/hello.tx"], [f"{source}/hello.tx"]),
        ([f"{source}/hello.txt", f"{source}/nope/data.bin", f"{source}/sub"], [f"{source}/nope/data.bin"]),
        (["source/hello.txt"], ["source/hello.txt"]),  # relative: paths are as `repo ls` prints them
        ([f"{source}/hello.txt/inner"], [f"{source}/hello.txt/inner"]),  # below a file
    ):
        arguments = ["repo", "restore", "latest", "-t", str(target)]
        for include in includes:
            arguments += ["--include", include]
        result = run_lockstep(arguments, env=env_for(repository))
        line = assert_clean_error(result, ExitCode.NOT_FOUND, "matches nothing in snapshot", "nothing was restored")
        assert all(path in line for path in named), line
        assert f"{source}/hello.txt," not in line and f"{source}/sub," not in line, line  # the ones that match
        assert "lockstep repo ls" in line, line
        assert not target.exists(), "a restore whose include matched nothing wrote its target"

    # What matches still restores: a file, a directory (with a trailing slash), the whole tree.
    for include, restored in (
        (f"{source}/hello.txt", "hello.txt"),
        (f"{source}/sub/", "sub/data.bin"),
        ("/", "hello.txt"),
    ):
        result = run_lockstep(["repo", "restore", "latest", "-t", str(target), "-i", include], env=env_for(repository))
        assert result.returncode == 0, result.err
        assert (target / source.lstrip("/") / restored).is_file(), include


# --- restore targets ----------------------------------------------------------------------------


def test_restore_target_that_is_a_file_exits_14_and_keeps_the_file(repository: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("precious\n")
    result = run_lockstep(["repo", "restore", "latest", "-t", str(target)], env=env_for(repository))
    assert_clean_error(result, ExitCode.STORAGE, str(target), "--target")
    assert target.read_text() == "precious\n"


def test_restore_target_below_a_file_exits_14(repository: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    target = blocker / "restore"
    result = run_lockstep(["repo", "restore", "latest", "-t", str(target)], env=env_for(repository))
    assert_clean_error(result, ExitCode.STORAGE, str(target), "--target")
    assert blocker.read_text() == "a file, not a directory\n"


def test_restore_into_a_read_only_directory_exits_14(repository: Path, tmp_path: Path) -> None:
    # Root ignores chmod 0555, so the kernel must refuse the writes: a read-only tmpfs mount.
    with tmpfs(tmp_path / "read-only", "1m", read_only=True) as mount_point:
        for target in (mount_point, mount_point / "new-subdirectory"):
            result = run_lockstep(["repo", "restore", "latest", "-t", str(target)], env=env_for(repository))
            assert_clean_error(result, ExitCode.STORAGE, str(target), "--target")
        assert list(mount_point.iterdir()) == []


def test_errors_stay_on_one_line_on_a_narrow_terminal(tmp_path: Path) -> None:
    environment = {**env_for(tmp_path / "nothing-here"), "COLUMNS": "30"}
    result = run_lockstep(["repo", "snapshots"], env=environment)
    assert_clean_error(result, ExitCode.NO_REPOSITORY, "no repository", "lockstep repo init")


def bucket_objects(s3_env: dict[str, str]) -> dict[str, int]:
    """Every object under the repository's bucket with its size, listed with plain boto3."""
    import boto3

    endpoint, bucket, _ = parse_location(s3_env["LOCKSTEP_REPOSITORY"])
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = item["Size"]
    return objects


def test_failing_stdin_command_leaves_nothing_behind_on_s3(s3_env: dict[str, str]) -> None:
    assert run_lockstep(["repo", "init"], env=s3_env).returncode == 0
    assert run_lockstep(["repo", "backup", "--stdin"], env=s3_env, input=b"first\n").returncode == 0
    before = bucket_objects(s3_env)
    failing = "head -c 40000000 /dev/urandom; exit 3"
    result = run_lockstep(["repo", "backup", "--stdin-from-command", "--", "sh", "-c", failing], env=s3_env)
    assert_clean_error(result, ExitCode.SOURCE, "exited with code 3", "no snapshot")
    assert bucket_objects(s3_env) == before, "the failed backup left objects in the bucket"
