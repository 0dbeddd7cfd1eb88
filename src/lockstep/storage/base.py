"""The contract every storage backend fulfils, and restic's file layout."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from enum import Enum
from typing import Protocol

from lockstep.errors import StorageError


class FileType(Enum):
    """The kinds of files in a repository, named as restic names their directories."""

    CONFIG = "config"
    KEY = "keys"
    PACK = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"


class FileMissing(StorageError):
    """The backend has no file of that type and name."""


def relative_path(file_type: FileType, name: str) -> str:
    """The file's path inside the repository: packs fan out by their first two hex digits."""
    if file_type is FileType.CONFIG:
        return "config"
    if file_type is FileType.PACK:
        return f"data/{name[:2]}/{name}"
    return f"{file_type.value}/{name}"


# lockstep's own documents (deploy locks, verification records) live under this directory of the
# repository. restic ignores directories it does not know, so `restic check` and `prune` pass.
DOCUMENTS_DIRECTORY = "lockstep"


def check_document_path(path: str) -> str:
    """Refuse paths that could escape the documents directory; return the path unchanged."""
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise ValueError(f"not a valid document path: {path!r}")
    return path


def is_storage_id(name: str) -> bool:
    """True for names restic would recognise: 64 lowercase hex characters."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class Backend(Protocol):
    """Stores and fetches whole files; every write is atomic (all or nothing)."""

    @property
    def location(self) -> str:
        """A human description of where the repository is, without credentials."""
        ...

    def create(self) -> None:
        """Prepare an empty repository location; raise RepositoryExists if a repository is already there."""
        ...

    def save(self, file_type: FileType, name: str, data: bytes | bytearray) -> None:
        """Write a whole file atomically: readers see all of it or none of it."""
        ...

    def load(self, file_type: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read a file, or `length` bytes of it from `offset`. Raises FileMissing."""
        ...

    def load_pieces(
        self, file_type: FileType, name: str, offset: int, lengths: Sequence[int]
    ) -> Generator[bytes | memoryview, None, None]:
        """Consecutive pieces of a file from `offset`, of these lengths, read with one request
        and handed over one at a time, so that only the piece in hand is held: a copy reads runs
        of blobs of up to 16 MiB this way. A piece is shorter than asked (even empty) where the
        file ends, and may be a view that the next piece overwrites: use it before asking for
        the next. Raises FileMissing (at the first piece)."""
        ...

    def size(self, file_type: FileType, name: str) -> int:
        """The size of a file in bytes. Raises FileMissing."""
        ...

    def exists(self, file_type: FileType, name: str) -> bool:
        """Whether the file is there."""
        ...

    def list(self, file_type: FileType) -> Iterator[tuple[str, int]]:
        """Every (name, size) of that type; names that are not storage IDs are skipped."""
        ...

    def remove(self, file_type: FileType, name: str) -> None:
        """Delete a file; deleting a missing file is not an error."""
        ...

    def remove_stale_temporary_files(self, older_than_seconds: float) -> int:
        """Delete the temporary files of writes that never finished (a process killed while it
        wrote a pack, index or snapshot), if older than `older_than_seconds`; how many went.
        Only under an exclusive lock: then no writer that honours locks can be running."""
        ...

    def save_document(self, path: str, data: bytes) -> None:
        """Write lockstep/PATH atomically, replacing what is there."""
        ...

    def create_document(self, path: str, data: bytes) -> bool:
        """Write lockstep/PATH only if it does not exist yet, atomically; False when it exists."""
        ...

    def load_document(self, path: str) -> bytes:
        """Read lockstep/PATH. Raises FileMissing."""
        ...

    def list_documents(self, directory: str) -> Iterator[str]:
        """The paths (relative to lockstep/) of the documents directly in lockstep/DIRECTORY."""
        ...

    def remove_document(self, path: str) -> None:
        """Delete lockstep/PATH; deleting a missing document is not an error."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
