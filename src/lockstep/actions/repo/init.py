"""`lockstep repo init`: create a repository."""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend


@dataclass(frozen=True)
class InitResult:
    location: str
    repository_id: str
    version: int


def init_repository(access: RepositoryAccess) -> InitResult:
    backend = open_backend(access.resolved_location())
    repository = Repository.init(backend, access.password())
    try:
        return InitResult(backend.location, repository.config.id, repository.config.version)
    finally:
        repository.close()
