"""Opening a repository from what the user gave: location and a password source."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lockstep.actions.repo.passwords import legacy_password, password_from_command_output, password_from_file_bytes
from lockstep.errors import SourceError, UsageError, WrongPassword
from lockstep.process import Command, run_capture
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend


@dataclass(frozen=True)
class RepositoryAccess:
    """Where the repository is and how to get its password; resolved lazily."""

    location: str | None = None
    password_file: Path | None = None
    password_command: str | None = None
    lock_wait_seconds: float = 0.0

    def resolved_location(self) -> str:
        location = self.location or os.environ.get("LOCKSTEP_REPOSITORY", "")
        if not location:
            raise UsageError(
                "no repository given",
                "pass --repo LOCATION or set LOCKSTEP_REPOSITORY (a path, local:PATH or s3:URL/BUCKET)",
            )
        return location

    def password(self) -> str:
        """From --password-file, --password-command or LOCKSTEP_PASSWORD, in that order; a file's
        content and a command's output are read as restic reads them (passwords.py)."""
        return self.password_candidates()[0]

    def password_candidates(self) -> list[str]:
        """The password as restic reads it, then (when it differs) as earlier lockstep versions
        read a file or command output, which kept surrounding spaces and tabs: opening tries both,
        so repositories created that way still open; new keys only ever get the first."""
        if self.password_file is not None:
            try:
                data = self.password_file.read_bytes()
            except OSError as error:
                raise UsageError(
                    f"cannot read the password file {self.password_file}: {error.strerror}",
                    "fix the path given to --password-file (or LOCKSTEP_PASSWORD_FILE)",
                ) from error
            password = password_from_file_bytes(data)
            legacy = legacy_password(data.decode("utf-8", "surrogateescape"))
        elif self.password_command is not None:
            try:
                output = run_capture(Command.parse(self.password_command), timeout=60, errors="surrogateescape")
            except SourceError as error:
                # Not a backup source: the password is configuration, so this is a usage error.
                raise UsageError(f"--password-command failed: {error.message}", "fix the command") from error
            password = password_from_command_output(output)
            legacy = legacy_password(output)
        else:
            password = os.environ.get("LOCKSTEP_PASSWORD", "")
            legacy = password
            file_from_environment = os.environ.get("LOCKSTEP_PASSWORD_FILE")
            if not password and file_from_environment:
                return RepositoryAccess(password_file=Path(file_from_environment)).password_candidates()
        if not password:
            raise UsageError(
                "no repository password given",
                "set LOCKSTEP_PASSWORD, or pass --password-file FILE or --password-command CMD",
            )
        return [password] if legacy in (password, "") else [password, legacy]

    def _open_while(self, meanwhile: Callable[[], None]) -> Repository:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockstep-open") as pool:
            opening = pool.submit(self.open, False)
            try:
                meanwhile()
            except BaseException:
                with contextlib.suppress(Exception):
                    opening.result().close()
                raise
            return opening.result()

    def open(self, load_index: bool = True) -> Repository:
        backend = open_backend(self.resolved_location())
        first, *others = self.password_candidates()
        try:
            repository = Repository.open(backend, first)
        except WrongPassword:
            for other in others:
                with contextlib.suppress(WrongPassword):
                    repository = Repository.open(backend, other)
                    break
            else:
                raise
        if load_index:
            repository.load_index()
        return repository

    @contextmanager
    def session(
        self,
        exclusive: bool = False,
        lock: bool = True,
        load_index: bool = True,
        defer_lock_recheck: bool = False,
        meanwhile: Callable[[], None] | None = None,
    ) -> Iterator[Repository]:
        """An open repository, locked for the duration (snapshots are read before the index).
        `defer_lock_recheck`: for writers that commit only at the end (see locks.locked).
        `meanwhile`: work for this thread while the repository opens on another, such as
        importing a database driver; the key derivation (~0.1 s of scrypt) releases the GIL."""
        repository = self.open(load_index=False) if meanwhile is None else self._open_while(meanwhile)
        try:
            if lock:
                with locked(
                    repository,
                    exclusive=exclusive,
                    wait_seconds=self.lock_wait_seconds,
                    defer_recheck=defer_lock_recheck,
                ):
                    if load_index:
                        repository.load_index()
                    yield repository
            else:
                if load_index:
                    repository.load_index()
                yield repository
        finally:
            repository.close()
