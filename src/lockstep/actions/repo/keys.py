"""`lockstep repo key list|add|remove|passwd`: the passwords that open a repository.

Every key file seals the same master key under a different password, so adding or removing
one never touches the data. The locks follow restic: listing and adding take a shared lock,
removing and changing a password an exclusive one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockstep.actions.repo.passwords import password_from_file_bytes
from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import IntegrityError, UsageError
from lockstep.repository.gojson import parse_time_ns
from lockstep.repository.keyfile import add_key_file, find_key_id, load_key_file, remove_key_file
from lockstep.storage.base import FileMissing, FileType


@dataclass(frozen=True)
class KeyEntry:
    """One key file as `key list` shows it; `damaged` keys could not be parsed."""

    id: str
    username: str
    hostname: str
    created: str
    created_ns: int | None
    current: bool
    damaged: bool = False

    @property
    def short_id(self) -> str:
        return self.id[:8]


@dataclass(frozen=True)
class PasswordChange:
    """What `key passwd` did: the key that now opens the repository, and the one removed."""

    new_key_id: str
    removed_key_id: str


def read_new_password(path: Path) -> str:
    """The new password from a file, read as restic reads --new-password-file (passwords.py):
    without a byte order mark and surrounding white space."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read the new password file {path}: {error.strerror}") from error
    password = password_from_file_bytes(data)
    if not password:
        raise UsageError(f"the new password file {path} is empty", "write the new password into it")
    return password


def _created_ns(created: str) -> int | None:
    try:
        return parse_time_ns(created)
    except ValueError:
        return None


def list_keys(access: RepositoryAccess) -> list[KeyEntry]:
    """Every key file, oldest first; the one the password opened is marked current."""
    entries = []
    with access.session(exclusive=False, load_index=False) as repository:
        for key_id, _ in repository.backend.list(FileType.KEY):
            try:
                key_file = load_key_file(repository.backend, key_id)
            except FileMissing:
                continue  # removed while we listed
            except IntegrityError:
                entries.append(KeyEntry(key_id, "", "", "", None, key_id == repository.key_id, damaged=True))
                continue
            entries.append(
                KeyEntry(
                    id=key_id,
                    username=key_file.username,
                    hostname=key_file.hostname,
                    created=key_file.created,
                    created_ns=_created_ns(key_file.created),
                    current=key_id == repository.key_id,
                )
            )
    return sorted(entries, key=lambda entry: (entry.created_ns or 0, entry.id))


def add_key(
    access: RepositoryAccess,
    new_password: Callable[[], str],
    username: str | None = None,
    hostname: str | None = None,
) -> str:
    """Write a key file for the new password (the same master key); returns its ID.

    `new_password` is asked for only once the current password has opened the repository,
    so nobody types a new password twice only to learn that the old one was wrong.
    """
    with access.session(exclusive=False, load_index=False) as repository:
        return add_key_file(repository.backend, repository.key, new_password(), username, hostname)


def remove_key(access: RepositoryAccess, key_prefix: str) -> str:
    """Remove the key whose ID starts with `key_prefix`; never the one in use. Returns its ID."""
    with access.session(exclusive=True, load_index=False) as repository:
        key_id = find_key_id(repository.backend, key_prefix)
        remove_key_file(repository.backend, key_id, repository.key_id)
        return key_id


def change_password(access: RepositoryAccess, new_password: Callable[[], str]) -> PasswordChange:
    """Add a key for the new password, then remove the key in use: never zero keys, even after a crash."""
    with access.session(exclusive=True, load_index=False) as repository:
        new_key_id = add_key_file(repository.backend, repository.key, new_password())
        old_key_id = repository.key_id
        repository.backend.remove(FileType.KEY, old_key_id)
        repository.key_id = new_key_id
        return PasswordChange(new_key_id=new_key_id, removed_key_id=old_key_id)
