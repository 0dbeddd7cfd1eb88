"""Doctor checks against the real things: file modes on disk, a real repository with snapshots and
verification records, the real PostgreSQL and MariaDB servers with temporary roles, real nginx and
HAProxy binaries validating generated configs, and a socket with no agent behind it."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lockstep.agent.client import AgentClient
from lockstep.config.agent_model import ScheduleConfig
from lockstep.config.deploy_model import TrafficConfig
from lockstep.config.model import DatabaseConfig, ProjectConfig, RepositoryConfig
from lockstep.pipeline.doctor import (
    DoctorCheck,
    check_agent,
    check_database,
    check_password_files,
    check_pg_dump_version,
    check_proxy_config,
    check_repository,
    check_repository_permissions,
    check_schedules,
    check_secret_files,
    check_snapshot_ages,
    cron_mentions_lockstep,
    cron_problem,
    major_version,
    parse_mariadb_grants,
    server_major_version,
)
from lockstep.pipeline.snapshot import SnapshotRequest, create_snapshot
from lockstep.pipeline.verification_records import VerificationResult, latest_results, record_result
from lockstep.repository.gojson import format_time_ns
from lockstep.repository.repository import Repository
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from lockstep.traffic.factory import switch_for
from tests.conftest import TEST_PASSWORD, missing, require_binary

POSTGRESQL_HOST = "127.0.0.1:5432"


def by_name(checks: list[DoctorCheck], name: str) -> DoctorCheck:
    found = [check for check in checks if check.name == name]
    assert len(found) == 1, f"{name!r} not exactly once in {[check.name for check in checks]}"
    return found[0]


# -- permissions ---------------------------------------------------------------------------------


def test_secret_file_readable_by_others_fails_with_chmod_fix(tmp_path: Path) -> None:
    """A 0644 .env fails and the fix is the chmod that closes it; at 0600 the check passes."""
    secret = tmp_path / ".env"
    secret.write_text("API_TOKEN=not-for-others\n")
    secret.chmod(0o644)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.key").write_text("k")
    (tmp_path / "keys" / "a.key").chmod(0o600)
    patterns = [str(tmp_path / ".env"), str(tmp_path / "keys" / "*.key")]
    result = check_secret_files(patterns)
    assert result.status == "fail"
    assert result.fix == f"chmod 600 {secret}"
    assert "not-for-others" not in result.detail
    secret.chmod(0o600)
    fixed = check_secret_files(patterns)
    assert fixed.status == "pass" and "2 secret file(s)" in fixed.detail


def test_local_repository_open_to_others_fails(tmp_path: Path) -> None:
    """A repository root readable by others fails with a recursive chmod fix naming what is open;
    a closed root protects whatever is below it."""
    root = tmp_path / "repository"
    Repository.init(LocalBackend(root), TEST_PASSWORD).close()
    assert check_repository_permissions(f"local:{root}").status == "pass"
    (root / "config").chmod(0o444)
    assert check_repository_permissions(f"local:{root}").status == "pass"
    root.chmod(0o755)
    result = check_repository_permissions(f"local:{root}")
    assert result.status == "fail" and result.fix == f"chmod -R go-rwx {root}"
    assert str(root / "config") in result.detail and str(root / "data") not in result.detail
    assert check_repository_permissions("s3:http://127.0.0.1:9/bucket").status == "pass"


def test_password_file_must_be_0600(tmp_path: Path) -> None:
    """0644 fails naming the mode and `chmod 600`; 0600 and 0400 pass; a missing file fails."""
    password_file = tmp_path / "repository-password"
    password_file.write_text("hunter2\n")
    password_file.chmod(0o644)
    loose = check_password_files({"repository password_file": password_file})[0]
    assert loose.status == "fail" and "0644" in loose.detail and loose.fix == f"chmod 600 {password_file}"
    assert "hunter2" not in loose.detail
    password_file.chmod(0o600)
    assert check_password_files({"repository password_file": password_file})[0].status == "pass"
    password_file.chmod(0o400)
    assert check_password_files({"repository password_file": password_file})[0].status == "pass"
    gone = check_password_files({"x": tmp_path / "missing"})[0]
    assert gone.status == "fail"


# -- repository and snapshots --------------------------------------------------------------------


def test_wrong_repository_password_fails_with_the_fix(tmp_path: Path) -> None:
    """The wrong password is named by its source, never by its value; the right one passes."""
    root = tmp_path / "repository"
    Repository.init(LocalBackend(root), TEST_PASSWORD).close()
    wrong = "wrong-password-4f1a"
    result, repository = check_repository(
        lambda: Repository.open(LocalBackend(root), wrong), f"local:{root}", "LOCKSTEP_PASSWORD"
    )
    assert result.status == "fail" and repository is None
    assert result.fix is not None and "LOCKSTEP_PASSWORD" in result.fix
    assert wrong not in result.detail + result.fix
    result, repository = check_repository(
        lambda: Repository.open(LocalBackend(root), TEST_PASSWORD), f"local:{root}", "LOCKSTEP_PASSWORD"
    )
    assert result.status == "pass" and repository is not None
    repository.close()
    missing_result, _ = check_repository(
        lambda: Repository.open(LocalBackend(tmp_path / "nothing"), TEST_PASSWORD), "local:nothing", "x"
    )
    assert missing_result.status == "fail" and missing_result.fix is not None and "repo init" in missing_result.fix


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    """A fresh local repository, open."""
    opened = Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD)
    try:
        yield opened
    finally:
        opened.close()


def snapshot_at(repository: Repository, project: Path, when: datetime) -> str:
    """A real coordinated snapshot (no code, no databases) whose `time` is `when`; its id.

    The builder stamps the current time, so the snapshot file is rewritten with the old time
    through the repository API and the original removed.
    """
    project.mkdir(exist_ok=True)
    config = ProjectConfig(repository=RepositoryConfig(url=f"local:{project}"))
    created = create_snapshot(repository, config, SnapshotRequest(project_directory=project), None, now=lambda: when)
    original = created.snapshot
    old = dataclasses.replace(original, time=format_time_ns(int(when.timestamp() * 1e9)), id="")
    repository.save_snapshot(old)
    repository.backend.remove(FileType.SNAPSHOT, original.id)
    return old.id


def verified(snapshot_id: str, ok: bool, when: datetime) -> VerificationResult:
    return VerificationResult(
        snapshot_id=snapshot_id,
        level="restore",
        ok=ok,
        started=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        seconds=1.0,
    )


def test_snapshot_older_than_the_rpo_fails_and_no_verification_warns(repository: Repository, tmp_path: Path) -> None:
    """Only a 30-hour-old snapshot with RPO 26 h: fail; never verified: warn."""
    now = datetime.now(UTC)
    snapshot_at(repository, tmp_path / "project", now - timedelta(hours=30))
    snapshots = repository.list_snapshots()
    results = check_snapshot_ages(snapshots, latest_results(repository, [s.id for s in snapshots]), 26.0, now)
    good = by_name(results, "last good snapshot")
    assert good.status == "fail" and "older than the RPO" in good.detail and good.fix and "lockstep backup" in good.fix
    assert by_name(results, "last verified snapshot").status == "warn"
    assert by_name(results, "last verified snapshot").detail == "no snapshot has been verified"


def test_recent_verified_snapshot_passes_and_failed_verification_is_not_good(
    repository: Repository, tmp_path: Path
) -> None:
    """A newer snapshot whose verification failed does not count as good; the older verified one does."""
    now = datetime.now(UTC)
    older = snapshot_at(repository, tmp_path / "project", now - timedelta(hours=2))
    newer = snapshot_at(repository, tmp_path / "project", now - timedelta(hours=1))
    record_result(repository, verified(older, True, now))
    record_result(repository, verified(newer, False, now))
    snapshots = repository.list_snapshots()
    results = check_snapshot_ages(snapshots, latest_results(repository, [s.id for s in snapshots]), 26.0, now)
    good = by_name(results, "last good snapshot")
    assert good.status == "pass" and good.detail.startswith(older[:8])
    last_verified = by_name(results, "last verified snapshot")
    assert last_verified.status == "pass" and "restore" in last_verified.detail
    later = now + timedelta(hours=30)
    aged = check_snapshot_ages(snapshots, latest_results(repository, [s.id for s in snapshots]), 26.0, later)
    assert by_name(aged, "last good snapshot").status == "fail"
    assert by_name(aged, "last verified snapshot").status == "warn"


def test_no_snapshots_fails() -> None:
    """An empty repository has no good snapshot at all."""
    results = check_snapshot_ages([], {}, 26.0)
    assert by_name(results, "last good snapshot").status == "fail"
    assert by_name(results, "last good snapshot").detail == "no snapshots yet"


# -- schedules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression", ["0 2 * * *", "*/15 * * * 1-5", "0 4 * * sun", "5,35 0-6/2 1 jan-jun 7", "@daily"]
)
def test_valid_cron_expressions(expression: str) -> None:
    """Numbers, ranges, lists, steps, names and aliases are accepted."""
    assert cron_problem(expression) is None


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 2 * *", "fields"),
        ("61 * * * *", "minute"),
        ("0 24 * * *", "hour"),
        ("0 0 0 * *", "day-of-month"),
        ("0 0 * 13 *", "month"),
        ("0 0 * * 8", "day-of-week"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("every day", "fields"),
    ],
)
def test_invalid_cron_expressions_say_why(expression: str, words: str) -> None:
    """Each kind of mistake is named (by the agent's own parser, so doctor and the agent agree)."""
    problem = cron_problem(expression)
    assert problem is not None and words in problem


def test_schedules_empty_warns_and_an_invalid_cron_fails() -> None:
    """No [[schedules]]: warn with the two ways to schedule backups; a bad expression: fail."""
    empty = check_schedules([])
    if cron_mentions_lockstep():  # this machine's cron already runs lockstep backup
        assert empty[0].status == "pass"
    else:
        assert empty[0].status == "warn" and empty[0].detail == "no scheduled backups"
        assert empty[0].fix == "add [[schedules]] or run `lockstep backup` from cron"
    good = check_schedules([ScheduleConfig(job="backup", cron="0 2 * * *")])
    assert [check.status for check in good] == ["pass"]
    bad = ScheduleConfig.model_construct(job="verify", cron="0 25 * * *", level="restore")
    results = check_schedules([ScheduleConfig(job="backup", cron="0 2 * * *"), bad])
    assert by_name(results, "schedule 2 (verify)").status == "fail"
    assert "hour" in by_name(results, "schedule 2 (verify)").detail


# -- agent ---------------------------------------------------------------------------------------


def test_agent_not_running_fails_with_start_it(tmp_path: Path) -> None:
    """No socket: fail, and the fix says how to start the agent for that environment."""
    client = AgentClient(tmp_path / "agent.sock", "staging")
    result, status = check_agent(client)
    assert result.status == "fail" and status is None
    assert result.fix is not None and result.fix.startswith("start it") and "--env staging" in result.fix


# -- databases -----------------------------------------------------------------------------------


def test_sqlite_file_present_passes_and_missing_fails(tmp_path: Path) -> None:
    """SQLite: the file must exist and be readable; the check never creates it."""
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    assert [c.status for c in check_database("main", DatabaseConfig(url=f"sqlite:///{path}"))] == ["pass"]
    gone = check_database("gone", DatabaseConfig(url=f"sqlite:///{tmp_path / 'gone.db'}"))
    assert [c.status for c in gone] == ["fail"] and not (tmp_path / "gone.db").exists()


def test_postgresql_version_parsing() -> None:
    """pg_dump's --version text and server_version_num give comparable majors (9.6 stays 9.6)."""
    assert major_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == 15
    assert major_version("pg_dump (PostgreSQL) 9.6.24") == 906
    assert server_major_version(150004) == 15
    assert server_major_version(90624) == 906


def test_pg_dump_older_than_the_server_fails() -> None:
    """A server newer than the installed pg_dump fails with the client package to install."""
    require_binary("pg_dump", "apt-get install postgresql-client")
    result = check_pg_dump_version(99)
    assert result.status == "fail" and result.fix is not None and "postgresql-client-99" in result.fix
    assert check_pg_dump_version(10).status == "pass"


def postgresql(statements: str, database: str = "postgres") -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database, autocommit=True) as connection:
        for statement in statements.split(";"):
            if statement.strip():
                connection.execute(statement)


@pytest.fixture
def postgresql_database() -> Iterator[str]:
    """A temporary database with two tables, and a LOGIN role without CREATEDB; both dropped after."""
    require_binary("pg_dump", "apt-get install postgresql-client")
    try:
        import psycopg

        psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5).close()
    except Exception as error:
        missing(f"PostgreSQL is not reachable on {POSTGRESQL_HOST}: {error}")
    name = f"lockstep_doctor_{uuid.uuid4().hex[:8]}"
    postgresql(f"CREATE DATABASE {name}; CREATE ROLE {name} LOGIN NOCREATEDB")
    try:
        postgresql("CREATE TABLE notes (id int); CREATE TABLE audit (id int); GRANT SELECT ON notes TO PUBLIC", name)
        yield name
    finally:
        postgresql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE); DROP ROLE IF EXISTS {name}")


def test_postgresql_superuser_passes_every_check(postgresql_database: str) -> None:
    """postgres: reachable, pg_dump new enough, reads every table, may create scratch databases."""
    url = f"postgresql://postgres@{POSTGRESQL_HOST}/{postgresql_database}"
    results = check_database("main", DatabaseConfig(url=url))
    assert [check.status for check in results] == ["pass"] * 4, results
    assert {check.name for check in results} == {
        "database main",
        "database main pg_dump version",
        "database main read access",
        "database main create database",
    }


def test_postgresql_role_without_createdb_warns_and_unreadable_table_fails(postgresql_database: str) -> None:
    """A role without CREATEDB warns (no test-restores); a table it cannot SELECT fails, naming it."""
    role = postgresql_database
    url = f"postgresql://{role}@{POSTGRESQL_HOST}/{postgresql_database}"
    results = check_database("main", DatabaseConfig(url=url))
    create = by_name(results, "database main create database")
    assert create.status == "warn" and create.fix == f"ALTER ROLE {role} CREATEDB"
    read = by_name(results, "database main read access")
    assert read.status == "fail" and "public.audit" in read.detail and "public.notes" not in read.detail
    postgresql(f"GRANT SELECT ON audit TO {role}", postgresql_database)
    again = check_database("main", DatabaseConfig(url=url))
    assert by_name(again, "database main read access").status == "pass"
    assert by_name(again, "database main create database").status == "warn"


def test_mariadb_grants_parsing() -> None:
    """Global and per-database grants count; another database's grants do not."""
    lines = [
        "GRANT USAGE ON *.* TO `app`@`%`",
        "GRANT SELECT, SHOW VIEW, TRIGGER ON `shop`.* TO `app`@`%`",
        "GRANT ALL PRIVILEGES ON `other`.* TO `app`@`%`",
    ]
    on_database, on_everything = parse_mariadb_grants(lines, "shop")
    assert {"SELECT", "SHOW VIEW", "TRIGGER"} <= on_database and "EVENT" not in on_database
    assert "CREATE" not in on_everything
    on_database, on_everything = parse_mariadb_grants(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"], "shop")
    assert "LOCK TABLES" in on_database and "CREATE" in on_everything


def mariadb(statements: str) -> None:
    completed = subprocess.run(
        ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--connect-timeout=5"],
        input=statements.encode(),
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """A temporary database and a user with only SELECT on it; both dropped after."""
    require_binary("mariadb", "apt-get install mariadb-client")
    probe = subprocess.run(
        ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--connect-timeout=5", "-e", "SELECT 1"],
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if probe.returncode != 0:
        missing(f"MariaDB is not reachable on 127.0.0.1:3306: {probe.stderr.decode().strip()}")
    name = f"lockstep_doctor_{uuid.uuid4().hex[:8]}"
    mariadb(
        f"CREATE DATABASE {name}; CREATE USER '{name}'@'%' IDENTIFIED BY ''; GRANT SELECT ON {name}.* TO '{name}'@'%';"
    )
    try:
        yield name
    finally:
        mariadb(f"DROP DATABASE IF EXISTS {name}; DROP USER IF EXISTS '{name}'@'%';")


def test_mariadb_root_passes_and_a_select_only_user_fails(mariadb_database: str) -> None:
    """root has everything; a SELECT-only user lacks what mariadb-dump needs and CREATE for scratch."""
    root = check_database("main", DatabaseConfig(url=f"mariadb://root@127.0.0.1:3306/{mariadb_database}"))
    assert [check.status for check in root] == ["pass"] * 3, root
    user = mariadb_database
    limited = check_database("main", DatabaseConfig(url=f"mariadb://{user}@127.0.0.1:3306/{mariadb_database}"))
    read = by_name(limited, "database main read access")
    assert read.status == "fail" and "SHOW VIEW" in read.detail and "LOCK TABLES" in read.detail
    assert by_name(limited, "database main create database").status == "warn"


# -- proxy config --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_generated_proxy_config_is_validated(kind: str, tmp_path: Path) -> None:
    """None yet: warn; the adapter's rendered config passes `nginx -t`/`haproxy -c`; garbage fails."""
    require_binary(kind, f"apt-get install {kind}")
    traffic = TrafficConfig(kind=kind, listen="127.0.0.1:18080")
    assert check_proxy_config(traffic, tmp_path).status == "warn"
    switch = switch_for(traffic, tmp_path)
    config_path: Path = switch.managed_config  # type: ignore[attr-defined]
    (config_path.parent / "temp").mkdir(parents=True)
    config_path.write_text(switch.render_managed_config(18081))  # type: ignore[attr-defined]
    assert check_proxy_config(traffic, tmp_path).status == "pass"
    config_path.write_text("this is not a proxy config {\n")
    broken = check_proxy_config(traffic, tmp_path)
    assert broken.status == "fail" and str(config_path) in broken.detail
    assert check_proxy_config(TrafficConfig(kind="builtin"), tmp_path).status == "pass"
