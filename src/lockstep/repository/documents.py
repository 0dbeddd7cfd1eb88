"""Small encrypted JSON documents kept beside the restic data: locks, verification records.

They live under `lockstep/` in the repository, sealed with the master key like restic's own
unpacked files, so whoever can open the repository can read them and nobody else can. restic
ignores the directory: `restic check` and `prune` pass with it present.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lockstep.errors import IntegrityError
from lockstep.repository.crypto import AuthenticationFailed
from lockstep.repository.repository import Repository
from lockstep.repository.unpacked import decode_unpacked, encode_unpacked
from lockstep.storage.base import FileMissing


class DocumentStore:
    """Read and write `lockstep/<directory>/<name>` documents of one open repository."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._backend = repository.backend

    def _seal(self, document: dict[str, Any]) -> bytes:
        return encode_unpacked(self._repository.key, document, self._repository.config.version)

    def _open(self, path: str, sealed: bytes) -> dict[str, Any]:
        try:
            document = decode_unpacked(self._repository.key, sealed, self._repository.config.version)
        except (AuthenticationFailed, ValueError, json.JSONDecodeError) as error:
            raise IntegrityError(
                f"the repository document lockstep/{path} is damaged ({error})",
                "remove it if it is a lock or a verification record; lockstep writes them anew",
            ) from error
        if not isinstance(document, dict):
            raise IntegrityError(f"the repository document lockstep/{path} is not a JSON object")
        return document

    def save(self, path: str, document: dict[str, Any]) -> None:
        """Write the document, replacing any previous one."""
        self._backend.save_document(path, self._seal(document))

    def create(self, path: str, document: dict[str, Any]) -> bool:
        """Write the document only if none is there (atomic); False when one already is."""
        return self._backend.create_document(path, self._seal(document))

    def load(self, path: str) -> dict[str, Any] | None:
        """The document, or None when there is none."""
        try:
            sealed = self._backend.load_document(path)
        except FileMissing:
            return None
        return self._open(path, sealed)

    def list(self, directory: str) -> Iterator[str]:
        """Paths of the documents directly in `directory`."""
        return self._backend.list_documents(directory)

    def remove(self, path: str) -> None:
        """Delete the document; a missing one is not an error."""
        self._backend.remove_document(path)
