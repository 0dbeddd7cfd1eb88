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


def init_repository(access: RepositoryAccess, chunker_source: RepositoryAccess | None = None) -> InitResult:
    """Create the repository; with `chunker_source`, with that repository's chunker polynomial
    (restic's `init --copy-chunker-params`), so that backups into the new repository make the
    same chunks as the source's and deduplicate with what `repo copy` brings over. The source is
    opened first: a wrong source password creates nothing."""
    polynomial = None
    if chunker_source is not None:
        source = chunker_source.open(load_index=False)
        try:
            polynomial = source.config.chunker_polynomial
        finally:
            source.close()
    backend = open_backend(access.resolved_location())
    repository = Repository.init(backend, access.password(), chunker_polynomial=polynomial)
    try:
        return InitResult(backend.location, repository.config.id, repository.config.version)
    finally:
        repository.close()
