"""Shared fixtures: real binaries and servers, and a way to run the real `lockstep` command.

Tests that need an outside binary or service call `require_binary` / use `s3_endpoint`. On a
developer machine a missing one skips the test and says why; in CI (`LOCKSTEP_REQUIRE_ALL=1`,
set by .ci/run) it fails the test instead, so nothing passes by not running.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_PASSWORD = "correct horse battery staple"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (scripts/test.sh runs two workers) give each worker its own block of
    loopback ports for the tests' servers, below the kernel's ephemeral range: two workers then
    never hand out the same port, and no worker's outgoing connection can take a port a test has
    picked but not yet bound. A range set by the caller (LOCKSTEP_TEST_PORTS) is split the same way."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return
    index, count = int(worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    low, high = (int(part) for part in os.environ.get("LOCKSTEP_TEST_PORTS", "10000-21999").split("-"))
    size = (high - low + 1) // count
    os.environ["LOCKSTEP_TEST_PORTS"] = f"{low + index * size}-{low + (index + 1) * size - 1}"


def require_all() -> bool:
    return os.environ.get("LOCKSTEP_REQUIRE_ALL") == "1"


def missing(reason: str) -> None:
    """Skip with `reason` locally; fail in CI, where everything must run."""
    if require_all():
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


def require_binary(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed ({install_hint})")
    assert path is not None
    return path


@pytest.fixture
def hangup_not_ignored() -> Iterator[None]:
    """SIGHUP at its default for the processes this test starts. Under `nohup` (a CI run started
    that way) they inherit it ignored, and lockstep rightly leaves nohup's choice alone, so a test
    of what SIGHUP does would see nothing happen."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.fixture(autouse=True)
def fast_key_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at N=2^15 costs ~0.1 s per open; tests open repositories hundreds of times."""
    monkeypatch.setenv("LOCKSTEP_SCRYPT_N", "1024")


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def run_lockstep(
    args: list[str],
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> Completed:
    """Run the real CLI in a child process (`python -m lockstep`), as a user would."""
    environment = {**os.environ, "LOCKSTEP_SCRYPT_N": "1024", **(env or {})}
    completed = subprocess.run(
        [sys.executable, "-m", "lockstep", *args],
        input=input,
        capture_output=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Completed(completed.returncode, completed.stdout, completed.stderr)


def restic_blob_list_sha256(repository: str, snapshot_id: str, path: str) -> str:
    """The manifest's `blobs_sha256` of a file, recomputed with restic alone: walk the trees
    with `restic cat`, take the file's content IDs in order and hash them."""
    snapshot = json.loads(run_restic(repository, ["cat", "snapshot", snapshot_id]).out)
    tree_id = snapshot["tree"]
    *folders, name = path.strip("/").split("/")
    for folder in folders:
        tree = json.loads(run_restic(repository, ["cat", "blob", tree_id]).out)
        tree_id = next(node["subtree"] for node in tree["nodes"] if node["name"] == folder)
    tree = json.loads(run_restic(repository, ["cat", "blob", tree_id]).out)
    content = next(node["content"] for node in tree["nodes"] if node["name"] == name)
    return hashlib.sha256(b"".join(bytes.fromhex(blob_id) for blob_id in content)).hexdigest()


@pytest.fixture
def restic_binary() -> str:
    return require_binary("restic", "apt-get install restic")


def run_restic(
    repository: str,
    args: list[str],
    password: str = TEST_PASSWORD,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 300,
) -> Completed:
    """Run the real restic binary against `repository`."""
    environment = {
        **os.environ,
        "RESTIC_PASSWORD": password,
        "RESTIC_REPOSITORY": repository,
        "RESTIC_CACHE_DIR": "/tmp/lockstep-tests-restic-cache",
        **(env or {}),
    }
    completed = subprocess.run(
        ["restic", *args], input=input, capture_output=True, env=environment, timeout=timeout, check=False
    )
    return Completed(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def repository_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a fresh local repository location (not yet initialised)."""
    return {"LOCKSTEP_REPOSITORY": str(tmp_path / "repository"), "LOCKSTEP_PASSWORD": TEST_PASSWORD}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API server (moto in server mode) on a loopback port, for the whole session."""
    from tests.s3_server import moto_missing_reason, start_moto_server

    reason = moto_missing_reason()
    if reason:
        missing(reason)
    endpoint, stop = start_moto_server()
    try:
        yield endpoint
    finally:
        stop()


@pytest.fixture
def s3_env(s3_endpoint: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a fresh repository in its own bucket on the loopback S3 server."""
    bucket = "t" + format(abs(hash(request.node.nodeid)) % 10**12, "d")
    return {
        "LOCKSTEP_REPOSITORY": f"s3:{s3_endpoint}/{bucket}/repo",
        "LOCKSTEP_PASSWORD": TEST_PASSWORD,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def awkward_tree(tmp_path: Path) -> Path:
    """A directory with everything restic records: files, empty file, symlinks, nested and empty
    directories, awkward names, modes, and nanosecond mtimes."""
    root = tmp_path / "source"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "sub" / "deeper" / "repeated.txt").write_bytes(b"lockstep " * 200_000)
    (root / "link").symlink_to("hello.txt")
    (root / "dangling").symlink_to("does/not/exist")
    names = [
        'quote"name',
        "back\\slash",
        "new\nline",
        "tab\tname",
        "café 😀",
        "\u00a0nbsp",
        "\u2028sep",
        "del\x7f",
        "<&>",
        "UPPER",
        "lower",
    ]
    for name in names:
        (root / name).write_text(name)
    raw = os.fsencode(root) + b"/bytes-\xff\xfe"
    with open(raw, "wb") as handle:
        handle.write(b"not utf-8 name")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    (root / "sticky").mkdir()
    (root / "sticky").chmod(0o1777)
    os.utime(root / "hello.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root
