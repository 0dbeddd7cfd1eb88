"""DocumentStore: lockstep's encrypted side documents, invisible to restic's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockstep.errors import IntegrityError
from lockstep.repository.builder import SnapshotBuilder
from lockstep.repository.documents import DocumentStore
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_restic


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD)


def test_documents_are_encrypted_and_round_trip(repository: Repository, tmp_path: Path) -> None:
    """What is stored is sealed with the master key: the plain text appears nowhere on disk."""
    store = DocumentStore(repository)
    store.save("locks/production", {"holder": "alice-distinctive-name", "pid": 42})
    assert store.load("locks/production") == {"holder": "alice-distinctive-name", "pid": 42}
    assert store.load("locks/staging") is None
    raw = (tmp_path / "repository" / "lockstep" / "locks" / "production").read_bytes()
    assert b"alice-distinctive-name" not in raw
    assert list(store.list("locks")) == ["locks/production"]


def test_create_is_exclusive(repository: Repository) -> None:
    """The second creator learns the document exists and the first one's content stays."""
    store = DocumentStore(repository)
    assert store.create("locks/production", {"holder": "first"})
    assert not store.create("locks/production", {"holder": "second"})
    assert store.load("locks/production") == {"holder": "first"}


def test_a_damaged_document_is_an_integrity_error(repository: Repository, tmp_path: Path) -> None:
    """A flipped bit is reported with the document's path, not as a traceback."""
    store = DocumentStore(repository)
    store.save("verifications/abc", {"ok": True})
    path = tmp_path / "repository" / "lockstep" / "verifications" / "abc"
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="lockstep/verifications/abc"):
        store.load("verifications/abc")


def test_restic_checks_and_prunes_a_repository_with_documents(
    repository: Repository, tmp_path: Path, restic_binary: str
) -> None:
    """restic ignores lockstep/: check --read-data passes and prune leaves the documents alone."""
    with locked(repository), SnapshotBuilder(repository) as builder:
        builder.add_bytes("data/hello.txt", b"hello")
        builder.commit(["/data"])
    store = DocumentStore(repository)
    store.save("locks/production", {"holder": "me"})
    location = str(tmp_path / "repository")
    assert run_restic(location, ["check", "--read-data"]).returncode == 0
    assert run_restic(location, ["prune"]).returncode == 0
    assert store.load("locks/production") == {"holder": "me"}
