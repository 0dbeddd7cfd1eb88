"""A repository on local disk, laid out and written the way restic's local backend does."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

from lockstep.errors import RepositoryExists, StorageError
from lockstep.fault_injection import kill_point
from lockstep.storage.base import (
    DOCUMENTS_DIRECTORY,
    FileMissing,
    FileType,
    check_document_path,
    is_storage_id,
    relative_path,
)


def _describe_os_error(error: OSError, path: Path) -> StorageError:
    if error.errno == errno.ENOSPC:
        return StorageError(f"no space left on the device holding {path}", "free some space and try again")
    if error.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied for {path}", "check the owner and mode of the repository")
    if error.errno == errno.EROFS:
        return StorageError(f"{path} is on a read-only file system", "choose a writable location")
    return StorageError(f"cannot access {path}: {error.strerror}")


def _make_private_directories(directory: Path) -> None:
    """mkdir -p with mode 0700 on every directory it creates (mkdir's mode only sets the last)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)


_RESTIC_TEMPORARY = re.compile(r"[0-9a-f]{64}-tmp-[0-9]+")


def is_temporary_name(name: str) -> bool:
    """A file name of an unfinished write: lockstep's `.NAME-XXXXXXXX.tmp` or restic's `ID-tmp-DIGITS`."""
    return (name.startswith(".") and name.endswith(".tmp")) or _RESTIC_TEMPORARY.fullmatch(name) is not None


class LocalBackend:
    """Files under one directory; writes go to a temporary file, fsync, rename, fsync dir."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()

    @property
    def location(self) -> str:
        return f"local:{self.root}"

    def _path(self, file_type: FileType, name: str) -> Path:
        return self.root / relative_path(file_type, name)

    def create(self) -> None:
        config = self.root / "config"
        if config.exists():
            raise RepositoryExists(str(self.root))
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            for file_type in (FileType.KEY, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK):
                (self.root / file_type.value).mkdir(exist_ok=True, mode=0o700)
            data = self.root / "data"
            data.mkdir(exist_ok=True, mode=0o700)
            for prefix in range(256):
                (data / f"{prefix:02x}").mkdir(exist_ok=True, mode=0o700)
        except OSError as error:
            raise _describe_os_error(error, self.root) from error

    def save(self, file_type: FileType, name: str, data: bytes | bytearray) -> None:
        self._write(self._path(file_type, name), data, replace=True)

    def _write(self, path: Path, data: bytes | bytearray, replace: bool) -> bool:
        """Write via a temporary file; with replace=False, link it into place only if absent."""
        name = path.name
        directory = path.parent
        temporary_name = None
        try:
            _make_private_directories(directory)
            descriptor, temporary_name = tempfile.mkstemp(prefix=f".{name[:16]}-", suffix=".tmp", dir=directory)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(descriptor, view)
                    view = view[written:]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            # The window a kill -9 leaves a temporary file in (remove_stale_temporary_files).
            kill_point(f"local-write-before-rename:{path.relative_to(self.root).parts[0]}")
            os.chmod(temporary_name, 0o400)
            if replace:
                os.replace(temporary_name, path)
                temporary_name = None
            else:
                try:
                    os.link(temporary_name, path)  # atomic, and fails if the path exists
                except FileExistsError:
                    return False
            self._fsync_directory(directory)
            return True
        except OSError as error:
            raise _describe_os_error(error, path) from error
        finally:
            if temporary_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary_name)

    @staticmethod
    def _fsync_directory(directory: Path) -> None:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def load(self, file_type: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(file_type, name)
        try:
            with open(path, "rb") as handle:
                if offset:
                    handle.seek(offset)
                return handle.read() if length is None else handle.read(length)
        except FileNotFoundError as error:
            raise FileMissing(f"{relative_path(file_type, name)} is missing from {self.location}") from error
        except OSError as error:
            raise _describe_os_error(error, path) from error

    def load_pieces(
        self, file_type: FileType, name: str, offset: int, lengths: Sequence[int]
    ) -> Generator[bytes | memoryview, None, None]:
        path = self._path(file_type, name)
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                # One buffer for the whole run: a new one per blob of some MiB is an mmap and an
                # munmap each, which stalls every thread of the process on a busy machine.
                buffer = memoryview(bytearray(max(lengths, default=0)))
                for length in lengths:
                    yield buffer[: handle.readinto(buffer[:length])]
        except FileNotFoundError as error:
            raise FileMissing(f"{relative_path(file_type, name)} is missing from {self.location}") from error
        except OSError as error:
            raise _describe_os_error(error, path) from error

    def size(self, file_type: FileType, name: str) -> int:
        path = self._path(file_type, name)
        try:
            return path.stat().st_size
        except FileNotFoundError as error:
            raise FileMissing(f"{relative_path(file_type, name)} is missing from {self.location}") from error

    def exists(self, file_type: FileType, name: str) -> bool:
        return self._path(file_type, name).exists()

    def list(self, file_type: FileType) -> Iterator[tuple[str, int]]:
        if file_type is FileType.CONFIG:
            return
        for directory in self._directories(file_type):
            for entry in _entries(directory):
                if is_storage_id(entry.name) and entry.is_file(follow_symlinks=False):
                    try:
                        yield entry.name, entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue

    def _directories(self, file_type: FileType) -> Sequence[Path]:
        """Where files of `file_type` live: its directory, or for packs the 256 below data/."""
        base = self.root / file_type.value
        if file_type is not FileType.PACK:
            return [base]
        try:
            return sorted(entry for entry in base.iterdir() if entry.is_dir())
        except FileNotFoundError:
            return []

    def remove(self, file_type: FileType, name: str) -> None:
        path = self._path(file_type, name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise _describe_os_error(error, path) from error

    def remove_stale_temporary_files(self, older_than_seconds: float) -> int:
        """Temporary files of writes cut off by kill -9 or a crash: lockstep's (`.NAME-*.tmp`,
        see _write) and restic's (`ID-tmp-DIGITS`), in the directories of packs, indexes and
        snapshots. Not in locks/ (a process writes its lock file before it knows whether the
        repository is locked), keys/ or lockstep/ (written without a repository lock)."""
        limit = time.time() - older_than_seconds
        directories = [
            *self._directories(FileType.INDEX),
            *self._directories(FileType.SNAPSHOT),
            *self._directories(FileType.PACK),
        ]
        removed = 0
        for directory in directories:
            for entry in _entries(directory):
                if not is_temporary_name(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime >= limit:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    raise _describe_os_error(error, Path(entry.path)) from error
                removed += 1
        return removed

    def _document_path(self, path: str) -> Path:
        return self.root / DOCUMENTS_DIRECTORY / check_document_path(path)

    def save_document(self, path: str, data: bytes) -> None:
        self._write(self._document_path(path), data, replace=True)

    def create_document(self, path: str, data: bytes) -> bool:
        return self._write(self._document_path(path), data, replace=False)

    def load_document(self, path: str) -> bytes:
        location = self._document_path(path)
        try:
            return location.read_bytes()
        except FileNotFoundError as error:
            raise FileMissing(f"{DOCUMENTS_DIRECTORY}/{path} is missing from {self.location}") from error
        except OSError as error:
            raise _describe_os_error(error, location) from error

    def list_documents(self, directory: str) -> Iterator[str]:
        base = self._document_path(directory)
        try:
            entries = sorted(os.scandir(base), key=lambda entry: entry.name)
        except FileNotFoundError:
            return
        except OSError as error:
            raise _describe_os_error(error, base) from error
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                yield f"{directory}/{entry.name}"

    def remove_document(self, path: str) -> None:
        location = self._document_path(path)
        try:
            location.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise _describe_os_error(error, location) from error

    def close(self) -> None:
        return None


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of `directory`; none when it does not exist (yet, or any more)."""
    try:
        return list(os.scandir(directory))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise _describe_os_error(error, directory) from error
