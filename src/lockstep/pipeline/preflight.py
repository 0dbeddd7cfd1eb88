"""Checks to run before writing anything: room on disk, every database reachable, the tools present.

A backup at 03:00 that fails an hour into the dump because the disk was full, or because the
second database moved, wastes the hour and the I/O; these checks cost a second and name the
problem up front. Each returns a structured result (so `backup` and `deploy` can print, log or
serialise them) instead of raising; `raise_for_failures` turns the first failure into the
documented error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lockstep.config.model import DatabaseConfig, ProjectConfig
from lockstep.databases.base import ServerLocation, redact_url
from lockstep.errors import LockstepError, SourceError, StorageError
from lockstep.pipeline.snapshot import database_password

CheckKind = Literal["disk", "database", "binary"]
MEBIBYTE = 1024 * 1024

# Client tools each engine needs: every group must have one binary present.
REQUIRED_BINARIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "postgresql": (("pg_dump",), ("pg_restore",)),
    "mysql": (("mariadb-dump", "mysqldump"), ("mariadb", "mysql")),
    "mariadb": (("mariadb-dump", "mysqldump"), ("mariadb", "mysql")),
    "sqlite": (),
}
_INSTALL_HINTS = {
    "postgresql": "install the PostgreSQL client tools (apt-get install postgresql-client)",
    "mysql": "install the MariaDB client tools (apt-get install mariadb-client)",
    "mariadb": "install the MariaDB client tools (apt-get install mariadb-client)",
}


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `detail` says what was found, `fix` what to do when it failed."""

    name: str
    kind: CheckKind
    ok: bool
    detail: str
    fix: str | None = None

    def to_document(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def local_repository_path(url: str) -> Path | None:
    """The directory of a local repository (`local:PATH` or a plain path); None for S3."""
    if url.startswith("s3:"):
        return None
    return Path(url.removeprefix("local:"))


def check_free_disk_space(repository_url: str, minimum_mb: int) -> CheckResult:
    """At least `minimum_mb` MiB free on the file system that holds (or will hold) the repository."""
    name = "free disk space"
    path = local_repository_path(repository_url)
    if path is None:
        return CheckResult(name, "disk", True, "the repository is not on a local disk")
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        statistics = os.statvfs(existing)
    except OSError as error:
        return CheckResult(name, "disk", False, f"cannot read the free space of {existing}: {error.strerror}")
    free_mb = statistics.f_bavail * statistics.f_frsize // MEBIBYTE
    detail = f"{free_mb} MiB free at {existing} ({minimum_mb} MiB required)"
    if free_mb < minimum_mb:
        return CheckResult(
            name,
            "disk",
            False,
            detail,
            "free some space (e.g. `lockstep snapshot forget --prune`), or lower backup.min_free_disk_mb",
        )
    return CheckResult(name, "disk", True, detail)


def check_database_reachable(name: str, database: DatabaseConfig) -> CheckResult:
    """Connect to the database and run a trivial query, with the adapter's own connection code."""
    check = f"database {name}"
    shown = redact_url(database.url)
    try:
        password = database_password(name, database)
        _reach(database.engine, database.url, password)
    except LockstepError as error:
        return CheckResult(check, "database", False, f"not reachable: {error.message}", error.hint or _FIX_DATABASE)
    return CheckResult(check, "database", True, f"{shown} is reachable")


_FIX_DATABASE = "check the URL, that the server runs, and the credentials"


def _reach(engine: str, url: str, password: str | None) -> None:
    """Raise SourceError unless a connection to the database succeeds."""
    if engine == "postgresql":
        from lockstep.databases import postgresql

        location = ServerLocation.parse(url)
        with postgresql._connect(location, password, location.database) as connection:
            connection.execute("SELECT 1")
    elif engine in ("mysql", "mariadb"):
        from lockstep.databases import mysql

        mysql._query(ServerLocation.parse(url), password, "SELECT 1")
    else:
        from lockstep.databases import sqlite

        try:
            with contextlib.closing(sqlite._open_existing(sqlite.database_path(url))) as connection:
                connection.execute("SELECT count(*) FROM sqlite_master")
        except sqlite3.Error as error:
            raise SourceError(f"cannot read it: {error}") from None


# Where client tools are often installed that cron's PATH (/usr/bin:/bin) leaves out: a tool found
# only here is installed, and the fix is PATH, not apt-get.
_USUAL_TOOL_DIRECTORIES = (
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/pgsql/bin",
    "/usr/local/mysql/bin",
    "/opt/homebrew/bin",
    "/snap/bin",
)


def find_off_path(binary: str) -> Path | None:
    """`binary` in a usual install directory (newest PostgreSQL's first), when it is not on PATH."""
    postgresql = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in [*postgresql, *map(Path, _USUAL_TOOL_DIRECTORIES)]:
        candidate = directory / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def check_required_binaries(databases: Mapping[str, DatabaseConfig]) -> list[CheckResult]:
    """The dump and restore tools of every engine in use (one result per engine).

    A tool missing from PATH but installed elsewhere (cron runs with PATH=/usr/bin:/bin) is named
    with where it is, and the fix is to extend PATH, not to install it again."""
    results = []
    for engine in sorted({database.engine for database in databases.values()}):
        missing = [
            alternatives
            for alternatives in REQUIRED_BINARIES.get(engine, ())
            if not any(shutil.which(binary) for binary in alternatives)
        ]
        name = f"{engine} client tools"
        if missing:
            detail = f"{', '.join(' or '.join(group) for group in missing)} not found on PATH"
            elsewhere = [found for group in missing for found in [_first_off_path(group)] if found is not None]
            fix = _INSTALL_HINTS.get(engine)
            if elsewhere:
                directories = sorted({str(path.parent) for path in elsewhere})
                detail += f" ({os.environ.get('PATH', os.defpath)}), but installed: {', '.join(map(str, elsewhere))}"
                suggested = ":".join(dict.fromkeys([*directories, "/usr/bin", "/bin"]))
                fix = (
                    f"add {':'.join(directories)} to PATH where lockstep runs (in a crontab: "
                    f"PATH={suggested}; in a systemd unit: Environment=PATH={suggested})"
                )
            results.append(CheckResult(name, "binary", False, detail, fix))
        else:
            needed = [alternatives[0] for alternatives in REQUIRED_BINARIES.get(engine, ())]
            results.append(CheckResult(name, "binary", True, ", ".join(needed) or "no tools needed"))
    return results


def _first_off_path(alternatives: tuple[str, ...]) -> Path | None:
    return next((found for binary in alternatives if (found := find_off_path(binary)) is not None), None)


def run_preflight(config: ProjectConfig, min_free_disk_mb: int | None = None) -> list[CheckResult]:
    """Every check for a snapshot of `config`: disk first, then tools, then each database."""
    minimum = config.backup.min_free_disk_mb if min_free_disk_mb is None else min_free_disk_mb
    results = [check_free_disk_space(config.repository.url, minimum)]
    results.extend(check_required_binaries(config.databases))
    if all(result.ok for result in results if result.kind == "binary"):
        results.extend(check_database_reachable(name, database) for name, database in config.databases.items())
    return results


def raise_for_failures(results: Iterable[CheckResult]) -> None:
    """Raise the documented error for the first failed check: disk → 14, database or tool → 15."""
    for result in results:
        if result.ok:
            continue
        message = f"preflight: {result.name}: {result.detail}"
        if result.kind == "disk":
            raise StorageError(message, result.fix)
        if result.kind == "binary":
            raise SourceError(message, result.fix)
        raise SourceError(message + "; no snapshot was written", result.fix)


__all__ = [
    "CheckResult",
    "check_database_reachable",
    "check_free_disk_space",
    "check_required_binaries",
    "local_repository_path",
    "raise_for_failures",
    "run_preflight",
]
