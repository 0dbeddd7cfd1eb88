"""S3Backend against a real S3 server (moto) behind a proxy that breaks requests, as a flaky
network or a struggling server does. Without moto these tests skip (fail under
LOCKSTEP_REQUIRE_ALL=1)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.errors import StorageError
from lockstep.exit_codes import ExitCode
from lockstep.storage.base import FileType
from lockstep.storage.s3 import S3Backend
from tests.conftest import TEST_PASSWORD, run_lockstep
from tests.s3_fault_proxy import FaultProxy
from tests.storage.test_s3_backend import s3_endpoint

__all__ = ["s3_endpoint"]  # the module-scoped moto server fixture, shared


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def backend(proxy: FaultProxy) -> Iterator[S3Backend]:
    backend = S3Backend(proxy.endpoint, f"lockstep-test-{uuid.uuid4().hex[:16]}", "repo")
    backend.create()
    yield backend
    backend.close()


def test_a_body_cut_off_part_way_is_fetched_again(backend: S3Backend, proxy: FaultProxy) -> None:
    """botocore retries failed requests but not the reading of a body it already returned: one
    dropped connection during a restore or `check --read-data` ended the whole command."""
    name = secrets.token_hex(32)
    data = secrets.token_bytes(256 * 1024)
    backend.save(FileType.PACK, name, data)

    proxy.cut_bodies(2, method="GET", path_contains=f"/data/{name[:2]}/{name}")
    assert backend.load(FileType.PACK, name) == data
    assert len(proxy.broken) == 2

    proxy.cut_bodies(2, method="GET", path_contains=f"/data/{name[:2]}/{name}")
    assert backend.load(FileType.PACK, name, 1000, 5000) == data[1000:6000]
    assert len(proxy.broken) == 4


def test_a_streamed_read_cut_off_part_way_goes_on_where_it_broke(backend: S3Backend, proxy: FaultProxy) -> None:
    """A copy streams a run of blobs from one GET (load_pieces): a body cut off is asked for
    again from the first byte not yet read, and the pieces come out whole."""
    name = secrets.token_hex(32)
    data = secrets.token_bytes(1024 * 1024)
    backend.save(FileType.PACK, name, data)
    lengths = [100_000, 300_000, 0, 400_000, 24_000]

    proxy.cut_bodies(2, method="GET", path_contains=f"/data/{name[:2]}/{name}")
    pieces = [bytes(piece) for piece in backend.load_pieces(FileType.PACK, name, 1000, lengths)]

    assert len(proxy.broken) == 2
    starts = [1000 + sum(lengths[:number]) for number in range(len(lengths))]
    assert pieces == [data[start : start + length] for start, length in zip(starts, lengths, strict=True)]


def test_a_document_read_is_retried_too(backend: S3Backend, proxy: FaultProxy) -> None:
    backend.save_document("locks/production", b'{"holder": "deploy"}' * 100)
    proxy.cut_bodies(1, method="GET", path_contains="/lockstep/locks/production")
    assert backend.load_document("locks/production") == b'{"holder": "deploy"}' * 100
    assert len(proxy.broken) == 1


def test_a_body_that_keeps_breaking_is_a_storage_error(backend: S3Backend, proxy: FaultProxy) -> None:
    """The retries are bounded: a server that never finishes an answer is reported, and the
    message names the object and the endpoint but not the credentials."""
    name = secrets.token_hex(32)
    backend.save(FileType.INDEX, name, secrets.token_bytes(4096))
    proxy.cut_bodies(100, method="GET", path_contains=f"/index/{name}")
    with pytest.raises(StorageError) as raised:
        backend.load(FileType.INDEX, name)
    assert len(proxy.broken) == backend.retries + 1
    assert f"index/{name}" in raised.value.message
    assert "testing" not in str(raised.value)


def test_a_lock_that_cannot_be_removed_does_not_hide_the_real_error(
    proxy: FaultProxy, tmp_path: Path, s3_endpoint: str
) -> None:
    """The server stops answering while a backup writes its packs: the error names the failed
    pack upload. Before, the lock removal that failed next replaced it, so the user read
    "cannot delete locks/..." and never learnt why the backup failed."""
    location = f"s3:{proxy.endpoint}/lockstep-test-{uuid.uuid4().hex[:16]}/repo"
    environment = {
        "LOCKSTEP_REPOSITORY": location,
        "LOCKSTEP_PASSWORD": TEST_PASSWORD,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.bin").write_bytes(secrets.token_bytes(64 * 1024))

    proxy.fail(100, "PUT", "/repo/data/")
    proxy.fail(100, "DELETE", "/repo/locks/")
    failed = run_lockstep(["repo", "backup", str(source)], env=environment)
    assert failed.returncode == ExitCode.STORAGE, failed.err
    error_line = failed.err.strip().splitlines()[-1]
    assert error_line.startswith("lockstep: error: cannot write repo/data/"), failed.err
    assert "could not remove lock" in failed.err and "lockstep repo unlock" in failed.err

    # Once the server is back, the lock left behind is stale and goes; nothing else is left.
    proxy.clear()
    unlocked = run_lockstep(["repo", "unlock"], env=environment)
    assert unlocked.returncode == 0 and "removed" in unlocked.out, unlocked.err
    assert run_lockstep(["repo", "backup", str(source)], env=environment).returncode == 0


def test_work_already_committed_is_not_reported_as_failed(proxy: FaultProxy, tmp_path: Path) -> None:
    """The snapshot is stored; only removing the lock fails: exit 0 and a warning, as restic."""
    location = f"s3:{proxy.endpoint}/lockstep-test-{uuid.uuid4().hex[:16]}/repo"
    environment = {
        "LOCKSTEP_REPOSITORY": location,
        "LOCKSTEP_PASSWORD": TEST_PASSWORD,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    source = tmp_path / "source"
    source.mkdir()
    (source / "file.txt").write_text("kept\n")
    proxy.fail(100, "DELETE", "/repo/locks/")
    backed_up = run_lockstep(["repo", "backup", "--json", str(source)], env=environment)
    assert backed_up.returncode == 0, backed_up.err
    assert "could not remove lock" in backed_up.err
    proxy.clear()
    listed = run_lockstep(["repo", "snapshots", "--json"], env=environment)
    assert len(json.loads(listed.out)) == 1
