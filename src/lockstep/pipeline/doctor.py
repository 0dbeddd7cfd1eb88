"""`lockstep doctor`'s checks: each looks at one thing a deploy or a backup will need, and says how to fix it.

A setup usually breaks quietly: a pg_dump older than the server after an upgrade, a role that
lost CREATEDB, a secret file copied with the wrong mode, an agent that did not come back after
a reboot, a cron line that stopped running. Each of those fails hours later, in the middle of
the night. These checks find them in seconds and never raise: every problem becomes a
`DoctorCheck` with a one-line fix, so one broken thing does not hide the others.

The preflight checks of `backup` (pipeline/preflight.py) are reused and translated; the rest
live here. No check prints or returns a secret: details name files, roles and databases only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import sqlite3
import stat
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lockstep.agent.client import AgentClient, AgentUnavailable
from lockstep.config.agent_model import ScheduleConfig
from lockstep.config.deploy_model import TrafficConfig
from lockstep.config.model import DatabaseConfig
from lockstep.databases.base import ServerLocation, redact
from lockstep.errors import LockstepError, RepositoryNotFound, SourceError, UsageError, WrongPassword
from lockstep.pipeline.preflight import CheckResult, check_database_reachable, local_repository_path
from lockstep.pipeline.snapshot import database_password
from lockstep.pipeline.verification_records import VerificationResult
from lockstep.process import Command, run_capture
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot

Status = Literal["pass", "warn", "fail"]
TOOL_TIMEOUT_SECONDS = 30.0
MEBIBYTE = 1024 * 1024
# Privileges mariadb-dump needs with --single-transaction --routines --triggers --events.
MARIADB_DUMP_PRIVILEGES = ("SELECT", "SHOW VIEW", "TRIGGER", "EVENT", "LOCK TABLES")
SHOWN_NAMES = 5  # how many offending files or tables a detail names before "and N more"


@dataclass(frozen=True)
class DoctorCheck:
    """One line of the report: what was checked, how it went, what was found and what to do."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_document(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def passed(name: str, detail: str) -> DoctorCheck:
    return DoctorCheck(name, "pass", detail)


def warned(name: str, detail: str, fix: str | None) -> DoctorCheck:
    return DoctorCheck(name, "warn", detail, fix)


def failed(name: str, detail: str, fix: str | None) -> DoctorCheck:
    return DoctorCheck(name, "fail", detail, fix)


def from_preflight(result: CheckResult, name: str | None = None) -> DoctorCheck:
    """A preflight result as a doctor line (preflight knows only ok and not ok)."""
    return DoctorCheck(
        name or result.name, "pass" if result.ok else "fail", result.detail, None if result.ok else result.fix
    )


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


# -- tools ---------------------------------------------------------------------------------------


def tool_version(binary: str, *arguments: str) -> str | None:
    """The first line `binary arguments` prints on stdout; None when it cannot run."""
    try:
        output = run_capture(Command((binary, *arguments)), timeout=TOOL_TIMEOUT_SECONDS)
    except LockstepError:
        return None
    lines = output.strip().splitlines()
    return lines[0].split(" compiled with ")[0].strip() if lines else None  # restic adds its Go version


def check_tool(
    binary: str,
    why: str,
    install: str,
    required: bool = True,
    version_argument: str | None = "--version",
) -> DoctorCheck:
    """`binary` on PATH (with its version when it prints one); fail when required, warn when optional."""
    name = f"tool {binary}"
    path = shutil.which(binary)
    if path is not None:
        version = tool_version(path, version_argument) if version_argument else None
        return passed(name, f"{version or path} ({why})")
    detail = f"{binary} not found on PATH ({why})"
    return failed(name, detail, install) if required else warned(name, detail, install)


def major_version(text: str) -> int | None:
    """The PostgreSQL major version in `pg_dump (PostgreSQL) 15.4 (Debian ...)` or `9.6.24`."""
    found = re.search(r"\b(\d+)\.(\d+)", text) or re.search(r"\b(\d+)\b", text)
    if found is None:
        return None
    major = int(found.group(1))
    if major < 10 and found.lastindex == 2:  # 9.6 is a major version of its own
        return major * 100 + int(found.group(2))
    return major


def server_major_version(version_number: int) -> int:
    """`server_version_num` (150004, 90624) as the major version pg_dump reports (15, 906)."""
    return version_number // 10000 if version_number >= 100000 else version_number // 100


# -- configuration and repository ----------------------------------------------------------------


def check_repository(
    open_repository: Callable[[], Repository],
    location: str,
    password_source: str,
    name: str = "repository",
    url_setting: str = "repository.url",
) -> tuple[DoctorCheck, Repository | None]:
    """Open the repository (the password is right when its key opens); the open repository on success.

    `open_repository` opens it (e.g. RepositoryAccess.open), so that this module needs no
    knowledge of password sources. `name` and `url_setting` tell a copy of [repository.copies]
    from the repository itself.
    """
    init = f"`lockstep repo init -r {location}`" if name != "repository" else "`lockstep repo init`"
    try:
        repository = open_repository()
    except WrongPassword:
        return (
            failed(
                name,
                f"the password from {password_source} does not open the repository at {location}",
                f"make {password_source} give the password the repository was created with",
            ),
            None,
        )
    except RepositoryNotFound as error:
        return failed(name, error.message, f"create it with {init}, or fix {url_setting}"), None
    except LockstepError as error:
        return failed(name, f"cannot open the repository at {location}: {error.message}", error.hint), None
    return passed(name, f"{location} opens with the password from {password_source}"), repository


# -- databases -----------------------------------------------------------------------------------


def check_database(name: str, database: DatabaseConfig) -> list[DoctorCheck]:
    """Reachable, then the rights a dump and a scratch test-restore need, per engine."""
    if database.engine == "sqlite":
        try:
            return [check_sqlite_access(name, database)]
        except LockstepError as error:
            return [failed(f"database {name}", error.message, error.hint)]
    reachable = from_preflight(check_database_reachable(name, database))
    if reachable.status != "pass":
        return [reachable]
    try:
        password = database_password(name, database)
        if database.engine == "postgresql":
            return [reachable, *check_postgresql_rights(name, database.url, password)]
        return [reachable, *check_mariadb_rights(name, database.url, password)]
    except LockstepError as error:
        return [reachable, failed(f"database {name} rights", error.message, error.hint)]


def check_sqlite_access(name: str, database: DatabaseConfig) -> DoctorCheck:
    """The file readable (to copy it) and its directory writable (a restore swaps the file there)."""
    from lockstep.databases.sqlite import database_path

    check = f"database {name}"
    path = database_path(database.url)
    if not path.is_file():
        return failed(check, f"SQLite file {path} does not exist", "fix the path in the database URL")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        return failed(check, f"cannot read {path}: {error}", f"give lockstep's user read access to {path}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return failed(
            check,
            f"{path} is readable but its directory is not writable (a restore replaces the file there)",
            f"give lockstep's user write access to {path.parent}",
        )
    return passed(check, f"{path} is readable and its directory writable")


def check_postgresql_rights(name: str, url: str, password: str | None) -> list[DoctorCheck]:
    """pg_dump new enough for the server, SELECT on every table, and CREATEDB for scratch restores."""
    from lockstep.databases import postgresql

    location = ServerLocation.parse(url)
    secret = location.password(password)
    results: list[DoctorCheck] = []
    try:
        with postgresql._connect(location, password, location.database) as connection:
            version_row = connection.execute("SHOW server_version_num").fetchone()
            unreadable = connection.execute(
                """
                SELECT n.nspname || '.' || c.relname
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname NOT LIKE 'pg\\_toast%'
                  AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
                ORDER BY 1
                """
            ).fetchall()
            role_row = connection.execute(
                "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except SourceError as error:
        return [failed(f"database {name} rights", error.message, error.hint)]
    except Exception as error:  # psycopg errors: the query failed, not the connection
        return [failed(f"database {name} rights", redact(str(error).strip(), secret), "check the role's privileges")]
    server_major = server_major_version(int(version_row[0])) if version_row else None
    results.append(check_pg_dump_version(server_major, f"database {name} pg_dump version"))
    tables = [str(row[0]) for row in unreadable]
    role = str(role_row[0]) if role_row else location.user or "the role"
    if tables:
        results.append(
            failed(
                f"database {name} read access",
                f"role {role} cannot read {len(tables)} table(s): {_some(tables)}",
                f"GRANT USAGE on their schemas and SELECT on them to {role} (pg_dump must read every table)",
            )
        )
    else:
        results.append(passed(f"database {name} read access", f"role {role} can read every table"))
    if role_row and role_row[1]:
        results.append(passed(f"database {name} create database", f"role {role} can create scratch databases"))
    else:
        results.append(
            warned(
                f"database {name} create database",
                f"role {role} has no CREATEDB: `lockstep snapshot verify --level restore` cannot test-restore",
                f"ALTER ROLE {role} CREATEDB",
            )
        )
    return results


def check_pg_dump_version(server_major: int | None, name: str = "tool pg_dump version") -> DoctorCheck:
    """A pg_dump older than the server refuses to dump it; same for pg_restore's archive format."""
    path = shutil.which("pg_dump")
    if path is None:
        return failed(name, "pg_dump not found on PATH", "install the PostgreSQL client tools (postgresql-client)")
    text = tool_version(path, "--version") or ""
    client_major = major_version(text)
    if client_major is None or server_major is None:
        return warned(name, f"cannot compare versions ({text or 'no pg_dump --version output'})", None)
    shown_server = f"{server_major // 100}.{server_major % 100}" if server_major >= 900 else str(server_major)
    shown_client = f"{client_major // 100}.{client_major % 100}" if client_major >= 900 else str(client_major)
    if client_major < server_major:
        return failed(
            name,
            f"pg_dump {shown_client} is older than the server ({shown_server}): it refuses to dump it",
            f"install the PostgreSQL {shown_server} client tools (apt-get install postgresql-client-{shown_server})",
        )
    return passed(name, f"pg_dump {shown_client} can dump a PostgreSQL {shown_server} server")


def parse_mariadb_grants(lines: Iterable[str], database: str) -> tuple[set[str], set[str]]:
    """Privileges on `database` (from `*.*` and `db`.* grants) and global ones, from SHOW GRANTS lines."""
    on_database: set[str] = set()
    on_everything: set[str] = set()
    pattern = re.compile(r"^GRANT (?P<privileges>.+?) ON (?P<scope>\S+) TO ", re.IGNORECASE)
    for line in lines:
        found = pattern.match(line.strip())
        if found is None:
            continue
        privileges = {item.strip().upper() for item in found.group("privileges").split(",")}
        if "ALL PRIVILEGES" in privileges or "ALL" in privileges:
            privileges |= {*MARIADB_DUMP_PRIVILEGES, "CREATE", "DROP", "INSERT", "ALTER", "INDEX"}
        scope = found.group("scope").replace("`", "")
        if scope == "*.*":
            on_everything |= privileges
            on_database |= privileges
        elif scope.rsplit(".", 1)[0].replace("\\_", "_") == database and scope.endswith(".*"):
            on_database |= privileges
    return on_database, on_everything


def check_mariadb_rights(name: str, url: str, password: str | None) -> list[DoctorCheck]:
    """SHOW GRANTS holds what mariadb-dump needs, and CREATE on *.* for scratch test-restores."""
    from lockstep.databases import mysql

    location = ServerLocation.parse(url)
    rows = mysql._query(location, password, "SHOW GRANTS")
    lines = [row[0] for row in rows if row]
    on_database, on_everything = parse_mariadb_grants(lines, location.database)
    missing = [privilege for privilege in MARIADB_DUMP_PRIVILEGES if privilege not in on_database]
    user = location.user or "the user"
    results: list[DoctorCheck] = []
    if missing:
        results.append(
            failed(
                f"database {name} read access",
                f"{user} lacks {', '.join(missing)} on {location.database} (mariadb-dump needs them)",
                f"GRANT {', '.join(missing)} ON `{location.database}`.* TO the user {user}",
            )
        )
    else:
        results.append(passed(f"database {name} read access", f"{user} has {', '.join(MARIADB_DUMP_PRIVILEGES)}"))
    if "CREATE" in on_everything:
        results.append(passed(f"database {name} create database", f"{user} can create scratch databases"))
    else:
        results.append(
            warned(
                f"database {name} create database",
                f"{user} has no global CREATE: `lockstep snapshot verify --level restore` cannot test-restore",
                f"GRANT CREATE, DROP, INSERT, ALTER, INDEX ON *.* TO the user {user}",
            )
        )
    return results


# -- disk and permissions ------------------------------------------------------------------------


def check_free_space(name: str, path: Path, minimum_mb: int, setting: str) -> DoctorCheck:
    """At least `minimum_mb` MiB free where `path` is (or would be created); `setting` is the
    config key that sets the minimum, named in the fix."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        statistics = os.statvfs(existing)
    except OSError as error:
        return failed(name, f"cannot read the free space of {existing}: {error.strerror}", None)
    free_mb = statistics.f_bavail * statistics.f_frsize // MEBIBYTE
    detail = f"{free_mb} MiB free at {existing} ({minimum_mb} MiB required)"
    if free_mb < minimum_mb:
        return failed(name, detail, f"free some space (e.g. `lockstep snapshot forget --prune`), or lower {setting}")
    return passed(name, detail)


def _open_to_others(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def check_secret_files(patterns: list[str]) -> DoctorCheck:
    """Files matched by files.secrets: none readable (or writable) by the group or others."""
    name = "permissions secret files"
    if not patterns:
        return passed(name, "no secret files configured (files.secrets)")
    matched = sorted({Path(path) for pattern in patterns for path in glob.glob(pattern, recursive=True)})
    files = [path for path in matched if path.is_file()]
    exposed = [str(path) for path in files if _open_to_others(path)]
    if exposed:
        return failed(
            name,
            f"{len(exposed)} secret file(s) readable by group or others: {_some(exposed)}",
            "chmod 600 " + " ".join(exposed[:SHOWN_NAMES]),
        )
    return passed(name, f"{len(files)} secret file(s), none readable by group or others")


def check_repository_permissions(repository_url: str) -> DoctorCheck:
    """A local repository closed to group and others.

    A root directory at 0700 protects everything below it, whatever the modes there; only when
    the root is open do its entries and keys matter, and they are listed in the detail.
    """
    name = "permissions repository"
    path = local_repository_path(repository_url)
    if path is None:
        return passed(name, "the repository is not on a local disk")
    if not path.exists():
        return passed(name, f"{path} does not exist yet")
    if not _open_to_others(path):
        return passed(name, f"{path} is closed to group and others")
    candidates = [path]
    with contextlib.suppress(OSError):
        candidates.extend(sorted(path.iterdir()))
    with contextlib.suppress(OSError):
        candidates.extend(sorted((path / "keys").iterdir()))
    exposed = [str(candidate) for candidate in candidates if _open_to_others(candidate)]
    return failed(
        name,
        f"the repository is open to group or others: {_some(exposed)}",
        f"chmod -R go-rwx {path}",
    )


def check_password_files(files: Mapping[str, Path]) -> list[DoctorCheck]:
    """Password files (repository, databases) exist and have mode 0600 or stricter."""
    results = []
    for label, path in files.items():
        name = f"permissions {label}"
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as error:
            results.append(failed(name, f"cannot read {path}: {error.strerror}", f"create {path} with mode 0600"))
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            results.append(failed(name, f"{path} has mode {mode:04o}", f"chmod 600 {path}"))
        else:
            results.append(passed(name, f"{path} has mode {mode:04o}"))
    return results


# -- agent and traffic ---------------------------------------------------------------------------


def check_agent(client: AgentClient) -> tuple[DoctorCheck, dict[str, Any] | None]:
    """The environment's agent answers on its socket; its status when it does."""
    name = "agent"
    try:
        status = client.status()
    except AgentUnavailable as error:
        return failed(name, error.message, error.hint), None
    except LockstepError as error:
        return failed(name, f"the agent answers but fails: {error.message}", error.hint), None
    pid = (status.get("agent") or {}).get("pid")
    return passed(name, f"running for environment {client.environment!r}" + (f" (pid {pid})" if pid else "")), status


def check_traffic(listen: str, status: dict[str, Any] | None) -> DoctorCheck:
    """Something answers on the listen address when a release is active."""
    name = "traffic"
    if status is None:
        return warned(name, "not checked: the agent is not running", None)
    traffic = status.get("traffic") or {}
    if not status.get("active_slot"):
        return warned(name, f"nothing is deployed yet, so nothing serves {listen}", "deploy with `lockstep deploy`")
    if not traffic.get("running"):
        return failed(
            name,
            f"the {traffic.get('kind', 'traffic')} proxy is not running",
            "restart the agent, or deploy again to start the proxy",
        )
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as error:
        return failed(
            name,
            f"nothing accepts connections on {listen}: {error.strerror or error}",
            "check the proxy's log; deploy again to restart it",
        )
    return passed(name, f"{traffic.get('kind', 'proxy')} serves {listen} (upstream port {traffic.get('active_port')})")


def check_proxy_config(traffic: TrafficConfig, state_directory: Path) -> DoctorCheck:
    """The generated nginx/HAProxy config passes the proxy's own check (`nginx -t`, `haproxy -c`)."""
    name = "proxy config"
    if traffic.kind == "builtin":
        return passed(name, "the built-in proxy has no config file to validate")
    from lockstep.traffic.factory import switch_for

    switch = switch_for(traffic, state_directory)
    config_path = getattr(switch, "managed_config", None)
    if not isinstance(config_path, Path):
        return warned(name, f"the {traffic.kind} adapter does not expose its config file; not validated", None)
    if not config_path.is_file():
        return warned(
            name, f"no {traffic.kind} config generated yet (nothing deployed)", "deploy with `lockstep deploy`"
        )
    binary = shutil.which(traffic.kind)
    if binary is None:
        return failed(name, f"{traffic.kind} not found on PATH", f"install {traffic.kind}")
    directory = config_path.parent
    if traffic.kind == "nginx":
        argv: tuple[str, ...] = (
            binary, "-t", "-q", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(config_path),
        )  # fmt: skip
    else:
        argv = (binary, "-c", "-f", str(config_path))  # not -q: its alerts say what is wrong
    try:
        run_capture(Command(argv), timeout=TOOL_TIMEOUT_SECONDS)
    except LockstepError as error:
        return failed(
            name, f"{config_path} fails validation: {error.message}", f"run {Command(argv).display()} to see why"
        )
    return passed(name, f"{config_path} passes `{traffic.kind} {'-t' if traffic.kind == 'nginx' else '-c'}`")


# -- schedules -----------------------------------------------------------------------------------


def cron_problem(expression: str) -> str | None:
    """Why the agent's cron parser rejects `expression`; None when it accepts it."""
    from lockstep.agent.cron import CronExpression

    try:
        CronExpression.parse(expression)
    except ValueError as error:
        return str(error)
    return None


def cron_mentions_lockstep() -> bool:
    """Whether the user's crontab or the system's cron files run lockstep (a best-effort look)."""
    texts: list[str] = []
    crontab = shutil.which("crontab")
    if crontab is not None:
        with contextlib.suppress(LockstepError):
            texts.append(run_capture(Command((crontab, "-l")), timeout=TOOL_TIMEOUT_SECONDS))
    for path in [Path("/etc/crontab"), *sorted(Path("/etc/cron.d").glob("*"))]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            texts.append(path.read_text())
    return any(
        "lockstep" in line and "backup" in line
        for text in texts
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
    )


def check_schedules(schedules: list[ScheduleConfig]) -> list[DoctorCheck]:
    """[[schedules]] present and each cron expression valid; cron evidence counts as a schedule."""
    if not schedules:
        if cron_mentions_lockstep():
            return [passed("schedules", "no [[schedules]], but cron runs `lockstep backup`")]
        return [
            warned(
                "schedules",
                "no scheduled backups",
                "add [[schedules]] or run `lockstep backup` from cron",
            )
        ]
    results = []
    for number, schedule in enumerate(schedules, 1):
        problem = cron_problem(schedule.cron)
        name = f"schedule {number} ({schedule.job})"
        if problem is None:
            results.append(passed(name, f"{schedule.job} at `{schedule.cron}`"))
        else:
            results.append(
                failed(
                    name,
                    f"cron `{schedule.cron}` is invalid: {problem}",
                    "write five fields: minute hour day-of-month month day-of-week, e.g. `0 2 * * *`",
                )
            )
    if not any(schedule.job == "backup" for schedule in schedules) and not cron_mentions_lockstep():
        results.append(
            warned(
                "schedules", "no scheduled backups", "add a [[schedules]] backup job or run `lockstep backup` from cron"
            )
        )
    return results


# -- snapshot age --------------------------------------------------------------------------------


def _age_text(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def check_snapshot_ages(
    snapshots: list[Snapshot],
    verifications: Mapping[str, VerificationResult],
    rpo_hours: float,
    now: datetime | None = None,
    configured: Collection[str] = (),
    databases_of: Callable[[Snapshot], Collection[str]] | None = None,
) -> list[DoctorCheck]:
    """The newest good snapshot within the RPO (fail otherwise) and the newest verified one.

    "Good" is every snapshot whose latest verification did not fail and that holds every
    `configured` database (`databases_of` says which a snapshot holds; None: all of them): a
    pre-restore snapshot holds only the databases its restore replaced, so it is no recovery
    point for the whole project. The verified snapshot is held to the same RPO, but only warns:
    verification with test-restores usually runs less often (weekly) than backups, and a fail
    there would make doctor fail every day of the week.
    """
    moment = now or datetime.now(UTC)
    limit = f"agent.rpo_hours = {rpo_hours:g}"
    backup_fix = "take one now with `lockstep backup`, and schedule backups ([[schedules]] or cron)"
    held: dict[str, list[str]] = {}

    def missing(snapshot: Snapshot) -> list[str]:
        if databases_of is None:
            return []
        if snapshot.id not in held:
            names = set(databases_of(snapshot))
            held[snapshot.id] = [name for name in configured if name not in names]
        return held[snapshot.id]

    def newest_complete(candidates: list[Snapshot]) -> tuple[Snapshot | None, Snapshot | None]:
        """The newest candidate holding every configured database, and a newer partial one."""
        partial = None
        for snapshot in reversed(candidates):
            if not missing(snapshot):
                return snapshot, partial
            partial = partial or snapshot
        return None, partial

    def covered(snapshot: Snapshot) -> str:
        names = [name for name in configured if name not in missing(snapshot)]
        return ", ".join(names) if names else "no database"

    def partial_note(snapshot: Snapshot | None) -> str:
        return "" if snapshot is None else f"; newer {snapshot.short_id} holds only {covered(snapshot)}"

    def hours_since(snapshot: Snapshot) -> float:
        return (moment.timestamp() * 1e9 - snapshot.time_ns) / 3.6e12

    ordered = sorted(snapshots, key=lambda snapshot: snapshot.time_ns)
    good = [item for item in ordered if item.id not in verifications or verifications[item.id].ok]
    verified = [item for item in ordered if item.id in verifications and verifications[item.id].ok]
    results: list[DoctorCheck] = []
    complete, partial = newest_complete(good)
    if complete is None:
        if not good:
            detail = "no snapshots yet" if not ordered else "every snapshot failed its last verification"
        else:
            assert partial is not None  # good is not empty, and none of it complete
            detail = (
                f"no snapshot holds every configured database ({', '.join(configured)}); "
                f"the newest, {partial.short_id}, holds only {covered(partial)}"
            )
        results.append(failed("last good snapshot", detail, backup_fix))
    else:
        age = hours_since(complete)
        detail = f"{complete.short_id}, {_age_text(age)} old ({limit})"
        if age > rpo_hours:
            detail += ": older than the RPO"
            results.append(failed("last good snapshot", detail + partial_note(partial), backup_fix))
        else:
            results.append(passed("last good snapshot", detail + partial_note(partial)))
    verify_fix = 'run `lockstep snapshot verify --level restore`, and schedule it ([[schedules]] job = "verify")'
    newest_verified, _ = newest_complete(verified)
    if newest_verified is None:
        results.append(warned("last verified snapshot", "no snapshot has been verified", verify_fix))
    else:
        age = hours_since(newest_verified)
        level = verifications[newest_verified.id].level
        detail = f"{newest_verified.short_id} ({level}), {_age_text(age)} old ({limit})"
        if age > rpo_hours:
            results.append(warned("last verified snapshot", detail + ": older than the RPO", verify_fix))
        else:
            results.append(passed("last verified snapshot", detail))
    return results


def config_problem_check(error: LockstepError) -> DoctorCheck:
    """The config could not be loaded: the one line that stops every other check."""
    fix = error.hint or ("fix lockstep.toml as the message says" if isinstance(error, UsageError) else None)
    return failed("config", error.message, fix)


__all__ = [
    "DoctorCheck",
    "Status",
    "check_agent",
    "check_database",
    "check_free_space",
    "check_password_files",
    "check_pg_dump_version",
    "check_postgresql_rights",
    "check_proxy_config",
    "check_repository",
    "check_repository_permissions",
    "check_schedules",
    "check_secret_files",
    "check_snapshot_ages",
    "check_sqlite_access",
    "check_tool",
    "config_problem_check",
    "cron_problem",
    "from_preflight",
    "parse_mariadb_grants",
]
