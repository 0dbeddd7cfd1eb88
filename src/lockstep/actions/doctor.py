"""`lockstep doctor`: run every check of pipeline/doctor.py for one environment and collect the lines.

The order follows what depends on what: the config first (nothing else can run without it), then
the tools, the repository, the databases, disk and permissions, the agent and traffic, schedules,
and last the snapshots (which need the repository open).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lockstep.actions.environment import EnvironmentContext, load_environment, snapshot_environments
from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.repository_copies import copy_access
from lockstep.actions.snapshot_list import lockstep_snapshots
from lockstep.config import ProjectConfig
from lockstep.config.loading import find_config
from lockstep.errors import LockstepError
from lockstep.pipeline import doctor
from lockstep.pipeline.doctor import DoctorCheck
from lockstep.pipeline.preflight import check_required_binaries, local_repository_path
from lockstep.pipeline.snapshot import ENVIRONMENT_TAG_PREFIX, is_schema_only, load_manifest
from lockstep.pipeline.verification_records import latest_results
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot


@dataclass(frozen=True)
class DoctorReport:
    """Every check's line, in the order they ran."""

    environment: str | None
    checks: list[DoctorCheck]

    @property
    def failed(self) -> bool:
        return any(check.status == "fail" for check in self.checks)


def run_doctor(
    start: Path, config_path: Path | None, environment: str | None, now: datetime | None = None
) -> DoctorReport:
    """Check the project at `start` for `environment` (default: the config's default_environment)."""
    try:
        context = load_environment(start, config_path, environment)
        shown_path = find_config(start, config_path)
    except LockstepError as error:
        return DoctorReport(environment, [doctor.config_problem_check(error)])
    checks = [doctor.passed("config", f"{shown_path} is valid (environment {context.environment})")]
    checks.extend(_tool_checks(context))
    repository_check, repository = _open_repository(context)
    checks.append(repository_check)
    checks.extend(_copy_checks(context))
    try:
        for name, database in context.config.databases.items():
            checks.extend(doctor.check_database(name, database))
        checks.extend(_disk_checks(context))
        checks.extend(_permission_checks(context))
        agent_check, status = doctor.check_agent(context.agent())
        checks.append(_unless_needed(agent_check, context.config))
        checks.append(doctor.check_traffic(context.config.traffic.listen, status))
        checks.append(doctor.check_proxy_config(context.config.traffic, context.layout.proxy))
        checks.extend(doctor.check_schedules(context.config.schedules))
        checks.extend(_snapshot_checks(context, repository, now))
    finally:
        if repository is not None:
            repository.close()
    return DoctorReport(context.environment, checks)


def _unless_needed(agent_check: DoctorCheck, config: ProjectConfig) -> DoctorCheck:
    """A missing agent fails only where the config needs one: to deploy its components, run its
    schedules or serve its dashboard. A project that only takes snapshots (cron runs `lockstep
    backup`) would otherwise never get a clean report."""
    needed = config.app.components or config.schedules or config.agent.dashboard_listen
    if agent_check.status != "fail" or needed:
        return agent_check
    return doctor.warned(
        agent_check.name,
        f"{agent_check.detail}; nothing in the config needs it yet (no [app.components], [[schedules]] "
        "or agent.dashboard_listen)",
        agent_check.fix,
    )


def _tool_checks(context: EnvironmentContext) -> list[DoctorCheck]:
    config = context.config
    checks = []
    if config.code.kind == "git":
        checks.append(doctor.check_tool("git", "the code is a git work tree", "install git (apt-get install git)"))
    servers = {name: database for name, database in config.databases.items() if database.engine != "sqlite"}
    checks.extend(
        doctor.from_preflight(result, "tool " + result.name.removesuffix(" tools"))
        for result in check_required_binaries(servers)
    )
    kind = config.traffic.kind
    if kind in ("nginx", "haproxy"):
        checks.append(
            doctor.check_tool(
                kind,
                f"traffic.kind = {kind!r}",
                f"install {kind} (apt-get install {kind})",
                version_argument="-v" if kind == "haproxy" else None,
            )
        )
    checks.append(
        doctor.check_tool(
            "restic",
            "optional: reads the repository without lockstep",
            "install restic (apt-get install restic) to be able to read snapshots without lockstep",
            required=False,
            version_argument="version",
        )
    )
    return checks


def _open_repository(context: EnvironmentContext) -> tuple[DoctorCheck, Repository | None]:
    access = context.project.access
    try:
        location = access.resolved_location()
    except LockstepError as error:
        return doctor.failed("repository", error.message, error.hint), None
    try:
        source = access.password_source().origin
    except LockstepError as error:
        return doctor.failed("repository", error.message, error.hint), None

    def open_repository() -> Repository:
        repository = access.open(load_index=False)
        try:
            repository.load_index()
        except BaseException:
            repository.close()
            raise
        return repository

    return doctor.check_repository(open_repository, location, source)


def _copy_checks(context: EnvironmentContext) -> list[DoctorCheck]:
    """Each [repository.copies] entry opens with its own password, as `lockstep backup` will need."""
    checks = []
    for name, copy_config in context.config.repository.copies.items():
        access = copy_access(name, copy_config, context.project.directory)
        source = access.password_source().origin

        def open_copy(access: RepositoryAccess = access) -> Repository:
            return access.open(load_index=False)

        check, repository = doctor.check_repository(
            open_copy,
            copy_config.url,
            source,
            name=f"repository copy {name}",
            url_setting=f"repository.copies.{name}.url",
        )
        if repository is not None:
            repository.close()
        checks.append(check)
    return checks


def _disk_checks(context: EnvironmentContext) -> list[DoctorCheck]:
    """Each place against the minimum of the command that refuses there: a deploy writes releases
    in the state directory (deploy.min_free_disk_mb), a backup the repository (backup.*)."""
    config = context.config
    checks = [
        doctor.check_free_space(
            "disk state directory", context.layout.root, config.deploy.min_free_disk_mb, "deploy.min_free_disk_mb"
        )
    ]
    repository_path = local_repository_path(config.repository.url)
    if repository_path is not None:
        checks.append(
            doctor.check_free_space(
                "disk repository", repository_path, config.backup.min_free_disk_mb, "backup.min_free_disk_mb"
            )
        )
    return checks


def _permission_checks(context: EnvironmentContext) -> list[DoctorCheck]:
    config = context.config
    checks = [
        doctor.check_secret_files(config.files.secrets),
        doctor.check_repository_permissions(config.repository.url),
    ]
    password_files: dict[str, Path] = {}
    repository_file = context.project.access.password_file_in_use()
    if repository_file is not None:
        password_files["repository password_file"] = repository_file
    for name, copy_config in config.repository.copies.items():
        if copy_config.password_file is not None:
            password_files[f"repository.copies.{name} password_file"] = copy_config.password_file
    for name, database in config.databases.items():
        if database.password_file is not None:
            password_files[f"databases.{name} password_file"] = database.password_file
    checks.extend(doctor.check_password_files(password_files))
    return checks


def _snapshot_checks(
    context: EnvironmentContext, repository: Repository | None, now: datetime | None
) -> list[DoctorCheck]:
    rpo = context.config.agent.rpo_hours
    if repository is None:
        return [doctor.warned("last good snapshot", "not checked: the repository does not open", None)]
    # Deploys and `backup --env` tag the environment they ran in; `lockstep backup` without --env
    # tags env:default only when default_environment has no table of its own (snapshot_environments).
    wanted = {ENVIRONMENT_TAG_PREFIX + name for name in snapshot_environments(context)}
    try:
        # A schema-only snapshot backs up no data: it does not count towards the RPO.
        snapshots = [
            snapshot
            for snapshot in lockstep_snapshots(repository, context.project.name)
            if wanted & set(snapshot.tags) and not is_schema_only(snapshot)
        ]
        verifications = latest_results(repository, [snapshot.id for snapshot in snapshots])
    except LockstepError as error:
        return [doctor.failed("last good snapshot", f"cannot list snapshots: {error.message}", error.hint)]

    def databases_of(snapshot: Snapshot) -> list[str]:
        # Only the newest few are read: back to the newest that holds every configured database.
        return list(load_manifest(repository, snapshot).databases)

    try:
        return doctor.check_snapshot_ages(
            snapshots, verifications, rpo, now, list(context.config.databases), databases_of
        )
    except LockstepError as error:
        return [doctor.failed("last good snapshot", f"cannot read a snapshot's manifest: {error.message}", error.hint)]


__all__ = ["DoctorReport", "run_doctor"]
