"""RepositoryAccess.session: opening a repository while the caller does other work meanwhile."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import WrongPassword
from lockstep.repository.keyfile import ScryptParameters
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD


@pytest.fixture
def access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RepositoryAccess:
    Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD, ScryptParameters(n=1 << 14)).close()
    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)
    return RepositoryAccess(location=str(tmp_path / "repository"))


def lockstep_threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith("lockstep-")}


def test_the_repository_opens_on_a_thread_while_the_caller_works(access: RepositoryAccess) -> None:
    seen: list[str] = []

    def meanwhile() -> None:
        seen.append(threading.current_thread().name)

    with access.session(meanwhile=meanwhile) as repository:
        assert repository.config.chunker_polynomial
        assert repository.index is not None
    assert seen == [threading.main_thread().name]
    assert not lockstep_threads()


def test_a_failure_meanwhile_closes_the_repository_opened_alongside(access: RepositoryAccess) -> None:
    before = lockstep_threads()

    def meanwhile() -> None:
        raise RuntimeError("the database driver is missing")

    with pytest.raises(RuntimeError, match="driver is missing"), access.session(meanwhile=meanwhile):
        pytest.fail("the session must not start")
    assert lockstep_threads() == before
    # Nothing was locked: an exclusive session can start at once.
    with access.session(exclusive=True):
        pass


def test_a_wrong_password_is_reported_after_the_work_meanwhile(
    access: RepositoryAccess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKSTEP_PASSWORD", "not the password")
    done: list[bool] = []
    with pytest.raises(WrongPassword), access.session(meanwhile=lambda: done.append(True)):
        pytest.fail("the session must not start")
    assert done == [True]
