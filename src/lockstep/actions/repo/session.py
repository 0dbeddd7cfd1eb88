"""Opening a repository from what the user gave: location and a password source."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lockstep.actions.repo.passwords import legacy_password, password_from_command_output, password_from_file_bytes
from lockstep.errors import RepositoryNotFound, SourceError, UsageError, WrongPassword
from lockstep.process import Command, run_capture
from lockstep.redaction import process_redactor
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.storage.base import Backend
from lockstep.storage.location import open_backend

PASSWORD_VARIABLE = "LOCKSTEP_PASSWORD"
PASSWORD_FILE_VARIABLE = "LOCKSTEP_PASSWORD_FILE"
PASSWORD_COMMAND_VARIABLE = "LOCKSTEP_PASSWORD_COMMAND"


@dataclass(frozen=True)
class AccessNames:
    """The flags and variables one repository's location and password come from, and what
    messages call it: `repo copy` opens a second repository, the source, through restic's
    `--from-*` set, and its errors must say which of the two failed."""

    role: str = "repository"
    repo_flag: str = "--repo"
    repository_variable: str = "LOCKSTEP_REPOSITORY"
    password_variable: str = PASSWORD_VARIABLE
    password_file_flag: str = "--password-file"
    password_file_variable: str = PASSWORD_FILE_VARIABLE
    password_command_flag: str = "--password-command"
    password_command_variable: str = PASSWORD_COMMAND_VARIABLE


DESTINATION_NAMES = AccessNames()
SOURCE_NAMES = AccessNames(
    role="source repository",
    repo_flag="--from-repo",
    repository_variable="LOCKSTEP_FROM_REPOSITORY",
    password_variable="LOCKSTEP_FROM_PASSWORD",
    password_file_flag="--from-password-file",
    password_file_variable="LOCKSTEP_FROM_PASSWORD_FILE",
    password_command_flag="--from-password-command",
    password_command_variable="LOCKSTEP_FROM_PASSWORD_COMMAND",
)


@dataclass(frozen=True)
class PasswordSource:
    """Where the repository password comes from: a file, a command or LOCKSTEP_PASSWORD.

    `origin` names what chose it (`--password-file`, `LOCKSTEP_PASSWORD_COMMAND`,
    `repository.password_command in lockstep.toml`) for messages; it never holds the password."""

    kind: Literal["file", "command", "variable"]
    origin: str
    file: Path | None = None
    command: str | None = None
    directory: Path | None = None  # where a command from lockstep.toml runs: the config's directory


@dataclass(frozen=True)
class RepositoryAccess:
    """Where the repository is and how to get its password; resolved lazily.

    The password is found as restic finds it (cmd/restic, resolvePassword): a password file
    (`--password-file`, else $LOCKSTEP_PASSWORD_FILE) or a password command (`--password-command`,
    else $LOCKSTEP_PASSWORD_COMMAND), the two being mutually exclusive, and only without either of
    them $LOCKSTEP_PASSWORD. lockstep.toml's password_file/password_command count when neither a
    flag nor a variable names a file or command (the environment overrides the config, as
    LOCKSTEP_REPOSITORY overrides its url), and still win over $LOCKSTEP_PASSWORD."""

    location: str | None = None
    password_file: Path | None = None
    password_command: str | None = None
    lock_wait_seconds: float = 0.0
    configured_password_file: Path | None = None
    configured_password_command: str | None = None
    config_directory: Path | None = None
    # Whether the command takes --password-file/--password-command (the `repo` commands); project
    # commands do not, so their missing-password hint names the variables and lockstep.toml instead.
    password_options: bool = True
    names: AccessNames = DESTINATION_NAMES
    # The one password source to use, ignoring every flag and variable: a copy in
    # [repository.copies] names its own, and LOCKSTEP_PASSWORD* belong to the main repository.
    only_password_source: PasswordSource | None = None
    # A password command's output, kept for the life of this object, so the command runs once per
    # lockstep command (and once per agent, not on every dashboard refresh); dropped when it does
    # not open the repository, so a changed password is read again.
    _read: list[list[str]] = field(default_factory=list, init=False, compare=False, repr=False)

    def resolved_location(self) -> str:
        names = self.names
        location = self.location or os.environ.get(names.repository_variable, "")
        if not location:
            raise UsageError(
                f"no {names.role} given",
                f"pass {names.repo_flag} LOCATION or set {names.repository_variable} "
                "(a path, local:PATH, s3:HOST/BUCKET or s3:URL/BUCKET)",
            )
        return location

    def password_source(self) -> PasswordSource:
        """Which source gives the password; a file and a command both given is a usage error, as in
        restic ("Password file and command are mutually exclusive options")."""
        if self.only_password_source is not None:
            return self.only_password_source
        names = self.names
        file_origin = names.password_file_flag if self.password_file is not None else names.password_file_variable
        file_name = str(self.password_file) if self.password_file is not None else os.environ.get(file_origin, "")
        command_origin = (
            names.password_command_flag if self.password_command is not None else names.password_command_variable
        )
        command = self.password_command if self.password_command is not None else os.environ.get(command_origin, "")
        if file_name and command:
            raise UsageError(
                f"both a password file ({file_origin}) and a password command ({command_origin}) are given; "
                "they are mutually exclusive",
                f"keep only one of them (unset {names.password_file_variable} or {names.password_command_variable} "
                "if the other comes from the command line)",
            )
        if command:
            return PasswordSource("command", command_origin, command=command)
        if file_name:
            return PasswordSource("file", file_origin, file=Path(file_name))
        if self.configured_password_command is not None:
            return PasswordSource(
                "command",
                "repository.password_command in lockstep.toml",
                command=self.configured_password_command,
                directory=self.config_directory,
            )
        if self.configured_password_file is not None:
            return PasswordSource(
                "file", "repository.password_file in lockstep.toml", file=self.configured_password_file
            )
        return PasswordSource("variable", names.password_variable)

    def password_file_in_use(self) -> Path | None:
        """The password file this access reads, if any (its content is a secret to redact)."""
        try:
            source = self.password_source()
        except UsageError:
            return None
        return source.file

    def password(self) -> str:
        """The password as restic reads it from the chosen source (passwords.py)."""
        return self.password_candidates()[0]

    def password_candidates(self) -> list[str]:
        """The password as restic reads it, then (when it differs) as earlier lockstep versions
        read a file or command output, which kept surrounding spaces and tabs: opening tries both,
        so repositories created that way still open; new keys only ever get the first.

        Each value is taught to the process's redactor, so that a password from a command or a
        file never shows in what lockstep prints, logs or sends."""
        if self._read:
            return self._read[0]
        source = self.password_source()
        candidates = _read_password(source, self._missing_password_hint(), self.names.role)
        redactor = process_redactor()
        for candidate in candidates:
            redactor.add(candidate)
        if source.kind == "command":
            self._read.append(candidates)
        return candidates

    def _missing_password_hint(self) -> str:
        """What to do without a password, naming only the options this command has."""
        if self.only_password_source is not None:
            source = self.only_password_source
            if source.kind == "variable":
                return f"set the environment variable {source.origin}"
            return f"fix {source.origin}"
        names = self.names
        variables = f"{names.password_file_variable} or {names.password_command_variable}"
        if self.password_options:
            flags = f"{names.password_file_flag} FILE or {names.password_command_flag} CMD"
            return f"set {names.password_variable}, or pass {flags} (or set {variables})"
        return (
            f"set {names.password_variable}, {variables}, or repository.password_file or "
            "repository.password_command in lockstep.toml"
        )

    def forget_password(self) -> None:
        """Read the password again next time (it did not open the repository: it may have changed)."""
        self._read.clear()

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
        location = self.resolved_location()
        backend = open_backend(location)
        first, *others = self.password_candidates()
        try:
            repository = self._open_with(backend, first)
        except WrongPassword:
            for other in others:
                with contextlib.suppress(WrongPassword):
                    repository = self._open_with(backend, other)
                    break
            else:
                self.forget_password()
                raise
        if load_index:
            repository.load_index()
        return repository

    def _open_with(self, backend: Backend, password: str) -> Repository:
        """Repository.open, its errors naming this repository's role and --from-* options when it
        is not the one the plain options name (the source of `repo copy`)."""
        names = self.names
        if names == DESTINATION_NAMES:
            return Repository.open(backend, password)
        try:
            return Repository.open(backend, password)
        except WrongPassword as error:
            raise WrongPassword(
                f"wrong password for the {names.role} at {backend.location}",
                f"check {names.password_variable}, {names.password_file_flag} or {names.password_command_flag}",
            ) from error
        except RepositoryNotFound as error:
            raise RepositoryNotFound(
                f"there is no {names.role} at {backend.location}",
                f"check {names.repo_flag} or {names.repository_variable}",
            ) from error

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


def _no_password(role: str, given: str = "") -> str:
    """`no repository password given`, or for another role `no password given for the source
    repository` or `... for the repository copy offsite` (not `no repository copy offsite password`)."""
    if role == "repository":
        return f"no repository password{given}"
    return f"no password{given} for the {role}"


def _read_password(source: PasswordSource, missing_hint: str, role: str = "repository") -> list[str]:
    """The password (and its legacy form, when it differs) from `source`; see password_candidates.
    `missing_hint` is what the error tells the user to do when no password is given at all (an
    empty file or command output gets a hint of its own: the variable would not be read); `role` names the
    repository in it ("source repository" for the source of `repo copy`)."""
    if source.kind == "file":
        assert source.file is not None
        try:
            data = source.file.read_bytes()
        except OSError as error:
            raise UsageError(
                f"cannot read the password file {source.file} (from {source.origin}): {error.strerror}",
                f"fix the path given by {source.origin}",
            ) from error
        password = password_from_file_bytes(data)
        legacy = legacy_password(data.decode("utf-8", "surrogateescape"))
        # Never "password: ..." in a message: the redactor masks what follows such an assignment.
        empty = f"{_no_password(role)} (the password file {source.file}, from {source.origin}, is empty)"
        missing_hint = f"write the password into {source.file}, or fix {source.origin}"
    elif source.kind == "command":
        assert source.command is not None
        command = Command.parse(source.command)
        if source.directory is not None:
            command = Command(command.argv, cwd=str(source.directory))
        try:
            output = run_capture(command, timeout=60, errors="surrogateescape")
        except SourceError as error:
            # Its standard output is never shown: it may hold (part of) the password. Not a backup
            # source's failure but configuration, so a usage error.
            raise UsageError(
                f"the password command (from {source.origin}) failed: {error.message}",
                "run the command by hand to see why, or fix it",
            ) from error
        password = password_from_command_output(output)
        legacy = legacy_password(output)
        empty = f"{_no_password(role)} (the password command, from {source.origin}, printed nothing)"
        missing_hint = f"make the command print the password (run it by hand to see), or fix {source.origin}"
    else:
        password = os.environ.get(source.origin, "")
        legacy = password
        empty = _no_password(role, " given")
    if not password:
        raise UsageError(empty, missing_hint)
    return [password] if legacy in (password, "") else [password, legacy]
