"""`lockstep deploy`: ship a git commit as a new release, blue-green, and never leave a half-done state.

The steps, each logged with its duration and each leaving an undo:

 1. preflight      tools, disk, databases, git ref, required variables, agent, free ports
 2. lock           the environment's lock in the repository (every deployer sees it)
 3. release        `git archive` of the commit into releases/<deploy-id>/, shared paths linked, build
 4. snapshot       the pre-deploy coordinated snapshot (code of the running release + databases)
 5. migrate        the migration command, with the migration version before and after
 6. start          the new release in the idle slot, through the agent; health gate
 7. smoke          the configured smoke tests against the new slot
 8. switch         traffic to the new slot, atomically; first the pre-switch check: the new
                   release still runs, with no more exits since its health gate than the watch allows
 9. watch          health, crash loops and the proxy's error rate for a while
10. retire         drain the old slot and stop its processes (web stays warm for a fast rollback)

Any failure, Ctrl-C, SIGTERM or SIGHUP unwinds the undo actions in reverse: traffic goes back, the new
slot stops, and when migrations ran the data comes back per the environment's data_rollback policy.
Traffic is held while the data comes back (pipeline/traffic_hold.py): from the start of the unwind
when the policy restores without asking, else once the restore is agreed to; released at the end.

An environment with `hosts` is deployed by pipeline/multi_host.py, which runs this pipeline on each
host over SSH as a *coordinated* deploy (DeployRequest.coordinated): it joins the orchestrator's lock
instead of taking one, and waits at two barriers, before switch and before retire
(pipeline/coordination.py), so that every host switches or none does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.client import AgentClient, AgentUnavailable
from lockstep.agent.state import other_slot
from lockstep.config.deploy_model import EffectivePolicy, effective_policy
from lockstep.databases import adapter_for
from lockstep.errors import LockstepError, UsageError
from lockstep.exit_codes import ExitCode
from lockstep.fault_injection import kill_point, wait_point
from lockstep.health.checks import run_check
from lockstep.health.gate import wait_until_healthy
from lockstep.notify.events import (
    DEPLOY_FAILED,
    DEPLOY_ROLLED_BACK,
    DEPLOY_STARTED,
    DEPLOY_SUCCEEDED,
    LOCK_BROKEN,
)
from lockstep.pipeline.code import read_git_state
from lockstep.pipeline.data_rollback import (
    describe_discarded,
    live_access,
    restore_snapshot_data,
    summarize_discarded,
)
from lockstep.pipeline.environment_lock import (
    EnvironmentLock,
    LockHolder,
    describe_holder,
)
from lockstep.pipeline.history import History, OperationRecord, RedactedRecord
from lockstep.pipeline.notifications import notifier_for, operation_event, secrets_redactor, teach_reporter_secrets
from lockstep.pipeline.release_launch import (
    ComponentPlan,
    app_environment,
    describe_commands,
    describe_health_gate,
    plan_components,
    traffic_component,
)
from lockstep.pipeline.releases import ResolvedRef, build_release_directory, new_deploy_id, prune_releases, resolve_ref
from lockstep.pipeline.slot_exits import PRE_SWITCH_CHECK_STEP, SlotExits, check_before_switch
from lockstep.pipeline.smoke import run_smoke_check
from lockstep.pipeline.snapshot import (
    DEPLOY_TAG_PREFIX,
    RELEASE_TAG_PREFIX,
    PreparedCode,
    SnapshotRequest,
    create_snapshot,
    database_password,
)
from lockstep.pipeline.steps import Reporter, StepFailed, StepRunner, bind_context
from lockstep.pipeline.traffic_hold import TrafficHold
from lockstep.pipeline.worker_pause import WorkerPause, resume_paused_workers
from lockstep.process import (
    Command,
    CommandGroup,
    CommandOutcome,
    groups_marked_with,
    process_alive,
    run_user_command,
    stop_command_group,
)
from lockstep.repository.documents import DocumentStore
from lockstep.runtimes.local import port_holder, port_is_free
from lockstep.traffic.common import parse_listen
from lockstep.wording import counted

WATCH_INTERVAL = 1.0
# In the environment of each user's command a deploy runs (build, migration, hook, smoke test):
# a random mark of that command, saved in the history before it starts (Deployment._run_tracked).
COMMAND_MARK_VARIABLE = "LOCKSTEP_COMMAND_MARK"


class DeployRolledBack(LockstepError):
    """The deploy failed and everything it changed was undone: the previous release serves."""

    exit_code = ExitCode.ROLLED_BACK


class DeployFailed(LockstepError):
    """The deploy failed and could not undo everything; the message says what is left."""

    exit_code = ExitCode.FAILED


class DeployRefused(LockstepError):
    """The pre-deploy hook said no: nothing was changed, as when preflight refuses."""

    exit_code = ExitCode.USAGE


PRE_DEPLOY_HOOK_STEP = "pre-deploy hook"


@dataclass(frozen=True)
class DeployRequest:
    """What the user asked `lockstep deploy` for."""

    ref: str = "HEAD"
    message: str | None = None
    dry_run: bool = False
    skip_migrations: bool = False
    skip_backup: bool = False
    force: bool = False
    yes: bool = False
    lock_wait: float = 0.0
    allow_dirty: bool = False
    # A host's part of a multi-host deploy: the orchestrator's deploy ID, used as this deploy's ID
    # and as the holder of the environment lock this deploy joins. None: an ordinary deploy.
    coordinated: str | None = None
    # A secondary host: the primary took the pre-deploy snapshot and ran the migrations.
    secondary: bool = False
    # A secondary whose unwind holds its traffic until the primary's data restore is over
    # (pipeline/coordination.py, the "held" barrier): the primary said its unwind restores.
    hold_on_unwind: bool = False
    # A host never started, the primary having failed before its switch barrier: it deploys
    # nothing, only holds its traffic and stops its workers while the primary restores the data.
    hold_only: bool = False


def migration_version(context: EnvironmentContext) -> str | None:
    """The first database's recognisable migration version (alembic, Rails, Django), or None."""
    for name, database in context.config.databases.items():
        if not_created_yet(database.url):
            continue
        summary = adapter_for(database.url).summarize(database.url, database_password(name, database))
        if summary.migration_version is not None:
            return summary.migration_version
    return None


def not_created_yet(url: str) -> bool:
    """A SQLite file that does not exist: the first deploy's migrations create it."""
    if not url.startswith("sqlite:"):
        return False
    from lockstep.databases.sqlite import database_path

    return not database_path(url).exists()


def hook_environment(record: OperationRecord) -> dict[str, str]:
    return {
        "LOCKSTEP_DEPLOY_ID": record.id,
        "LOCKSTEP_VERSION": record.commit or "",
        "LOCKSTEP_ENV": record.environment,
        "LOCKSTEP_PERFORMER": record.performer,
        "LOCKSTEP_OPERATION": record.operation,
        "LOCKSTEP_RELEASE": record.release_id or "",
        "LOCKSTEP_SNAPSHOT_ID": record.snapshot_id or "",
        "LOCKSTEP_OUTCOME": record.outcome,
    }


def run_hook(
    context: EnvironmentContext,
    name: str,
    record: OperationRecord,
    reporter: Reporter,
    run: Callable[[Command, float], CommandOutcome] = run_user_command,
) -> None:
    """Run a configured hook; a failing pre- hook fails the step, a failing post- hook only warns.
    A deploy passes `run` to record the hook's process group while it runs."""
    command_text = context.config.deploy.hooks.get(name)
    if not command_text:
        return
    command = Command(Command.parse(command_text).argv, env=hook_environment(record), cwd=str(context.directory))
    outcome = run(command, context.config.deploy.hook_timeout)
    if outcome.ok:
        reporter.info(f"hook {name}: ok ({outcome.seconds:.1f} s)")
        return
    message = f"hook {name} failed: {outcome.describe_failure(5)}"
    if name.startswith("pre-"):
        raise UsageError(message, f"fix the hook or the condition it checks (deploy.hooks.{name} in lockstep.toml)")
    reporter.warn(message)


def apply_deploy_policy(
    context: EnvironmentContext,
    policy: EffectivePolicy,
    request: DeployRequest,
    record: OperationRecord,
    reporter: Reporter,
    question: str,
) -> None:
    """The environment's policy, before anything changes: its approval command, the confirmation
    (`question`; production wants its name typed), and whether --skip-backup is allowed. A
    multi-host deploy applies it once, here, for every host."""
    if policy.approval_command:
        outcome = run_user_command(
            Command(
                Command.parse(policy.approval_command).argv, env=hook_environment(record), cwd=str(context.directory)
            ),
            timeout=300,
        )
        if not outcome.ok:
            raise UsageError(
                f"the approval command did not approve this deploy: {outcome.describe_failure(5)}",
                "get the approval it checks for, then deploy again",
            )
    if policy.confirm and not request.yes:
        expected = context.environment if context.environment == "production" else None
        if not reporter.confirm(question, expected):
            # Also what a wrong answer at a terminal gets: say what the question wanted.
            answer = f" by typing {expected}" if expected else " with y"
            raise UsageError(
                f"deploying to {context.environment} was not confirmed",
                f"confirm on a terminal{answer}, or pass --yes",
            )
    if request.skip_backup and policy.require_snapshot:
        raise UsageError(
            f"--skip-backup is not allowed in {context.environment}: its policy requires the pre-deploy snapshot",
            "deploy without --skip-backup, or set policy.require_snapshot = false for this environment",
        )


class Deployment:
    """One run of `lockstep deploy` for one environment."""

    def __init__(self, context: EnvironmentContext, request: DeployRequest, reporter: Reporter) -> None:
        self.context = context
        self.request = request
        self.reporter = reporter
        self.config = context.config
        self.layout = context.layout
        self.policy: EffectivePolicy = effective_policy(self.config.policy, context.environment)
        self.agent: AgentClient = context.agent(wait_for_restart=True)
        # Failure reasons quote command output (a migration's last lines), which may hold the
        # database password or a token: everything said, stored or raised passes through this.
        self.redactor = secrets_redactor(context)
        teach_reporter_secrets(reporter, self.redactor)
        self.history = History(self.layout.history_database, self.redactor)
        self.steps = StepRunner(reporter)
        self.lock: EnvironmentLock | None = None
        self.joined_lock: EnvironmentLock | None = None  # the orchestrator's, in a coordinated deploy
        self.release_directory: Path | None = None
        self.plans: list[ComponentPlan] = []
        self.broken_lock: LockHolder | None = None  # a stale or forced lock this deploy took over
        self.traffic_hold: TrafficHold | None = None
        # The serving release's workers, stopped while an unwind restores the data (worker_pause.py).
        self.worker_pause = WorkerPause(self.agent, self.config, self.layout.shared, reporter)
        # A coordinated deploy told "go" at its retire barrier: every host keeps the new release now.
        self.past_retire_go = False
        self.exits: SlotExits | None = None  # the new release's, from its health gate on
        bind_context(reporter, env=context.environment)

    # -- the plan ------------------------------------------------------------------------------

    def _code_work_tree(self) -> Path:
        code = self.config.code
        if code.kind != "git" or code.path is None:
            raise UsageError(
                "lockstep deploy ships git commits, and the code is not a git work tree",
                'set [code] kind = "git" and path to the work tree in lockstep.toml',
            )
        return code.path

    def plan(self) -> list[str]:
        """Every step and command as it would run, for --dry-run; changes nothing."""
        work_tree = self._code_work_tree()
        resolved = resolve_ref(work_tree, self.request.ref)
        active = self._active_slot_or_none()
        idle = "blue" if active is None else other_slot(active)
        release_id = new_deploy_id(resolved.commit)
        release = self.layout.release_directory(release_id)
        plans = plan_components(self.config, release, self.layout.shared, idle)
        source = self.config.app.source
        lines = [
            f"deploy {resolved.ref} ({resolved.short_commit} {resolved.subject}) to {self.context.environment}",
            f"1. preflight: git, free disk >= {self.config.deploy.min_free_disk_mb} MiB, "
            f"databases reachable ({', '.join(self.config.databases) or 'none'}), agent, free ports "
            + ", ".join(str(plan.port) for plan in plans if plan.port is not None),
            f"2. lock environment {self.context.environment} in the repository",
            f"3. release {release}: git archive {resolved.short_commit}"
            + ("" if source in (None, ".", "") else f":{source}")
            + (f"; link shared {', '.join(self.config.app.shared)}" if self.config.app.shared else "")
            + (f"; build: {self.config.app.build}" if self.config.app.build else ""),
            "4. pre-deploy snapshot"
            + (
                " (skipped: --skip-backup)" if self.request.skip_backup else f", verified at {self.policy.verify_level}"
            ),
            "5. migrate: "
            + ("skipped" if self.request.skip_migrations or not self.config.app.migrate else self.config.app.migrate),
            f"6. start in slot {idle}: {describe_commands(plans)}",
            f"   health: {describe_health_gate(plans)}",
            "7. smoke: "
            + ("; ".join(check.model_dump_json(exclude_defaults=True) for check in self.config.deploy.smoke) or "none"),
            (
                f"8. switch traffic at {self.config.traffic.listen} ({self.config.traffic.kind}) to slot {idle}, once "
                if traffic_component(self.config) is not None
                else f"8. no traffic to switch (no component has ports): slot {idle} becomes the active one, once "
            )
            + f"it still runs with at most {self.config.deploy.watch_max_exits} exits since its health gate",
            *self._watch_and_retire_lines(active),
            f"on failure: undo in reverse; data rollback policy: {self.policy.data_rollback}",
        ]
        for name, command in sorted(self.config.deploy.hooks.items()):
            lines.append(f"hook {name}: {command}")
        redactor = secrets_redactor(self.context)  # a smoke test's Authorization header, a token in a hook
        return [redactor.redact(line) for line in lines]

    def _watch_and_retire_lines(self, active: str | None) -> list[str]:
        """Steps 9 and 10 of the plan. An app of workers only is watched too, but has no requests
        whose error rate could roll back, and nothing of the old slot stays warm."""
        if traffic_component(self.config) is None:
            return [
                f"9. watch {self.config.deploy.watch_seconds:.0f} s: {self.config.deploy.watch_failures} failed "
                f"checks, more than {self.config.deploy.watch_max_exits} exits or a crash loop roll back "
                "(workers only: no error rate)",
                f"10. retire slot {active or '(none)'}: stop all of it (workers only: nothing kept warm)",
            ]
        return [
            f"9. watch {self.config.deploy.watch_seconds:.0f} s: {self.config.deploy.watch_failures} failed checks, "
            f"a crash loop or > {self.config.deploy.watch_error_rate:.0%} errors roll back",
            f"10. retire slot {active or '(none)'} after draining (at most {self.config.traffic.drain_timeout:.0f} s)",
        ]

    def _active_slot_or_none(self) -> str | None:
        try:
            active = self.agent.status().get("active_slot")
        except LockstepError:
            return None
        return str(active) if active else None

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> OperationRecord:
        """Deploy; returns the history record of a success, raises DeployRolledBack/DeployFailed."""
        work_tree = self._code_work_tree()
        resolved = self.steps.run("preflight", "", lambda: self._preflight(work_tree), lambda r: r.short_commit)
        deploy_id = self.request.coordinated or new_deploy_id(resolved.commit)
        record = OperationRecord.started_now(
            deploy_id,
            "deploy",
            self.context.environment,
            ref=resolved.ref,
            commit=resolved.commit,
            message=self.request.message or resolved.subject,
            release_id=deploy_id,
            coordinated=self.request.coordinated,
        )
        bind_context(self.reporter, deploy_id=record.id, env=record.environment)
        if self.request.coordinated:  # the orchestrator asked for approval and confirmation, once for all hosts
            self.steps.run("lock", self.context.environment, lambda: self._join_lock(), lambda _: "joined")
        else:
            self._confirm(record)
            self.steps.run("lock", self.context.environment, lambda: self._take_lock(record), lambda _: "held")
        self.steps.on_started = lambda step, detail: self._save_progress(record, step, detail)
        notifier = notifier_for(self.context, self.reporter)
        if self.broken_lock is not None:
            previous = self.broken_lock
            notifier.notify(
                operation_event(
                    LOCK_BROKEN,
                    record,
                    f"took over the lock of {previous.operation} {previous.deploy_id} "
                    f"by {previous.user}@{previous.host}",
                    previous_holder=previous.to_document(),
                )
            )
        try:
            self.history.save(record)
            notifier.notify(operation_event(DEPLOY_STARTED, record, f"deploying {record.id}"))
            self._run_steps(record, work_tree)
            notifier.notify(operation_event(DEPLOY_SUCCEEDED, record, f"deployed {record.id}"))
        except (Exception, KeyboardInterrupt) as error:  # any failure, a bug included, must unwind
            if record.outcome == "succeeded":  # interrupted once finished (its post-deploy hook)
                cause = "Ctrl-C, SIGTERM or SIGHUP" if isinstance(error, KeyboardInterrupt) else str(error)
                self.reporter.warn(
                    f"interrupted after deploy {record.id} had succeeded ({self.redactor.redact(cause)}): "
                    "it stays deployed; nothing is undone"
                )
                notifier.notify(operation_event(DEPLOY_SUCCEEDED, record, f"deployed {record.id}"))
                return record
            if self.past_retire_go:
                kept = self._keep_release(record, error)
                notifier.notify(operation_event(DEPLOY_FAILED, record, kept.message))
                raise kept from None
            try:
                self._fail(record, error)
            except DeployRolledBack as failure:
                notifier.notify(operation_event(DEPLOY_ROLLED_BACK, record, failure.message))
                raise
            except (DeployFailed, DeployRefused) as failure:
                notifier.notify(operation_event(DEPLOY_FAILED, record, failure.message))
                raise
        finally:
            self._release_lock()
            notifier.close()
        return record

    def _save_progress(self, record: OperationRecord, step: str, detail: str) -> None:
        """The record with the step now starting: a deploy killed in it is reported as killed there."""
        record.steps = self.steps.progress(step, detail)
        self.history.save(record)

    def _preflight(self, work_tree: Path) -> ResolvedRef:
        from lockstep.pipeline.preflight import (
            check_database_reachable,
            check_free_disk_space,
            check_required_binaries,
        )

        problems: list[str] = []
        if shutil.which("git") is None:
            problems.append("git is not installed: install it (apt-get install git)")
        for tools in check_required_binaries(self.config.databases):
            if not tools.ok:
                problems.append(f"{tools.name}: {tools.detail}: {tools.fix}")
        resolved = resolve_ref(work_tree, self.request.ref)
        allow_dirty = self.request.allow_dirty or self.config.code.allow_dirty
        if self.request.ref == "HEAD" and not allow_dirty and read_git_state(work_tree, self._own_directories()).dirty:
            problems.append(
                f"the git work tree {work_tree} has uncommitted changes, which a deploy of HEAD would not "
                "include: commit them, or pass --allow-dirty"
            )
        self.layout.create()
        disk = check_free_disk_space(f"local:{self.layout.root}", self.config.deploy.min_free_disk_mb)
        if not disk.ok:
            problems.append(f"{disk.detail}: free some space, or lower deploy.min_free_disk_mb")
        for name, database in self.config.databases.items():
            if not_created_yet(database.url):
                self.reporter.info(f"database {name} does not exist yet; the migrations create it")
                continue
            check = check_database_reachable(name, database)
            if not check.ok:
                problems.append(f"{check.name}: {check.detail}: {check.fix}")
        for name in self.config.deploy.required_env:
            if not os.environ.get(name):
                problems.append(f"the environment variable {name} is not set: the deploy needs it")
        try:
            status = self.agent.status()
        except AgentUnavailable as error:  # nothing was changed: refused (exit 2) like any preflight problem
            problems.append(str(error))
        else:
            problems.extend(self._taken_ports(status))
        if problems:
            raise UsageError("preflight failed:\n  - " + "\n  - ".join(problems))
        return resolved

    def _taken_ports(self, status: dict[str, Any]) -> list[str]:
        """The idle slot's ports, and the traffic listen address while the built-in proxy does not
        run yet, that another program holds: found here, before the snapshot and the migrations,
        rather than when the start or the switch fails and has to be undone."""
        problems: list[str] = []
        active = status.get("active_slot")
        idle = "blue" if not active else other_slot(str(active))
        running_ports = {
            process.get("port") for process in status["slots"][idle]["processes"] if process.get("running")
        }
        for plan in plan_components(self.config, self.layout.root, self.layout.shared, idle):
            if plan.port is not None and plan.port not in running_ports and not port_is_free(plan.port):
                holder = port_holder(plan.port)
                problems.append(
                    f"port {plan.port} of {plan.name} (slot {idle}) is taken"
                    + (f" by {holder}" if holder else "")
                    + ": stop that process or change the component's ports"
                )
        traffic = self.config.traffic
        proxy_running = bool((status.get("traffic") or {}).get("running"))
        if traffic.kind == "builtin" and not proxy_running and traffic_component(self.config) is not None:
            host, port = parse_listen(traffic.listen)
            if not port_is_free(port, host):
                holder = port_holder(port)
                problems.append(
                    f"the traffic listen address {traffic.listen} is taken"
                    + (f" by {holder}" if holder else "")
                    + ": stop that process or set another [traffic] listen"
                )
        return problems

    def _own_directories(self) -> tuple[Path, ...]:
        """What lockstep itself writes, which a fresh project has not told git to ignore: the state
        directory (the agent creates it before the first deploy) and a local repository."""
        directories = [self.layout.root.parent]
        try:
            location = self.context.project.access.resolved_location()
        except LockstepError:
            location = ""
        if location and not location.startswith("s3:"):
            path = Path(location.removeprefix("local:"))
            directories.append(path if path.is_absolute() else self.context.directory / path)
        return tuple(directories)

    def _confirm(self, record: OperationRecord) -> None:
        question = f"Deploy {record.commit and record.commit[:12]} to {self.context.environment}?"
        apply_deploy_policy(self.context, self.policy, self.request, record, self.reporter, question)

    def _document_store(self) -> DocumentStore:
        repository = self.context.project.access.open(load_index=False)
        return DocumentStore(repository)

    def _take_lock(self, record: OperationRecord) -> None:
        lock = EnvironmentLock(
            self._document_store(),
            self.context.project.name,
            self.context.environment,
            stale_after=self.config.deploy.lock_stale_after,
        )
        holder = LockHolder.for_this_process(record.id, self.context.environment, "deploy", record.message)

        def warn_stale(previous: LockHolder) -> None:
            self.broken_lock = previous
            self.reporter.warn(
                f"recovered a stale lock of {previous.operation} {previous.deploy_id} by {previous.user}@"
                f"{previous.host} (pid {previous.pid})"
            )

        if self.request.force:
            current = lock.current()
            live = current is not None and not current.by_hand_held and not lock.is_stale(current)[0]
            if current is not None and live and not self.request.yes:
                question = f"Take the lock from the live {describe_holder(current)}?"
                if not self.reporter.confirm(question):
                    raise UsageError(
                        "--force takes a live lock only after confirmation",
                        "answer on a terminal, or add --yes if you are sure the other deploy is gone",
                    )
        lock.acquire(holder, wait=self.request.lock_wait, force=self.request.force, on_stale=warn_stale)
        self.lock = lock
        wait_point("environment locked")  # tests: another deploy arrives while this one holds the lock
        self._clean_up_abandoned()

    def _join_lock(self) -> None:
        """A coordinated deploy runs under the orchestrator's lock: check it is there, and keep checking."""
        from lockstep.pipeline.coordination import check_joined_lock

        assert self.request.coordinated is not None
        lock = EnvironmentLock(
            self._document_store(),
            self.context.project.name,
            self.context.environment,
            stale_after=self.config.deploy.lock_stale_after,
        )
        check_joined_lock(lock, self.request.coordinated)
        self.joined_lock = lock
        self._clean_up_abandoned()

    def preflight_only(self) -> dict[str, Any]:
        """What the orchestrator checks of a host before it takes the lock: the preflight passes,
        and the repository is the one the orchestrator uses (compared by repository ID), under
        the same project name (its snapshots and its lock are found by it)."""
        from lockstep import __version__

        resolved = self._preflight(self._code_work_tree())
        repository = self.context.project.access.open(load_index=False)
        try:
            repository_id = repository.config.id
        finally:
            repository.close()
        return {
            "commit": resolved.commit,
            "repository_id": repository_id,
            "project": self.context.project.name,
            "version": __version__,
        }

    def _barrier(self, name: str, record: OperationRecord) -> None:
        """In a coordinated deploy: wait here until every host is here too (pipeline/coordination.py)."""
        if self.request.coordinated is None:
            return
        self.steps.run(f"{name} barrier", "waiting for every host", lambda: self._wait_at(name, record), lambda _: "go")

    def _wait_at(self, name: str, record: OperationRecord) -> None:
        from lockstep.pipeline.coordination import wait_at_barrier

        assert self.request.coordinated is not None
        # The primary tells whether its unwind would restore the data: then the other hosts
        # must hold their traffic while it does (the orchestrator starts them so).
        said = None if self.request.secondary else {"restores_data": self._restores_without_asking(record)}
        wait_at_barrier(name, self.request.coordinated, said=said)
        self.past_retire_go = name == "retire"
        if self.past_retire_go:  # killed from here on, its clean-up keeps the release (clean_up_abandoned)
            record.retire_go = True
            self.history.save(record)
        self._check_lock()

    def _release_lock(self) -> None:
        if self.lock is not None:
            try:
                self.lock.release()
            except LockstepError as error:
                self.reporter.warn(f"could not release the environment lock: {error}")
            self.lock = None

    def _clean_up_abandoned(self) -> None:
        """A deploy that was killed left a "running" record: stop what it started, mark it."""
        for abandoned in self.history.abandoned():
            clean_up_abandoned(self.context, abandoned, self.agent, self.history, self.reporter)

    def _check_lock(self) -> None:
        if self.lock is not None:
            self.lock.ensure_held()
        if self.joined_lock is not None and self.request.coordinated is not None:
            from lockstep.pipeline.coordination import check_joined_lock

            check_joined_lock(self.joined_lock, self.request.coordinated)

    def _run_steps(self, record: OperationRecord, work_tree: Path) -> None:
        status = self.agent.status()
        active = status.get("active_slot")
        old_slot = str(active) if active else None
        new_slot = "blue" if old_slot is None else other_slot(old_slot)
        record.slot = new_slot
        old_release = status["slots"][old_slot]["release"] if old_slot else None
        record.previous_release_id = old_release["release_id"] if old_release else None
        self.history.save(record)
        if self.config.deploy.hooks.get("pre-deploy"):
            self.steps.run(
                PRE_DEPLOY_HOOK_STEP,
                self.config.deploy.hooks["pre-deploy"],
                lambda: self._run_tracked_hook("pre-deploy", PRE_DEPLOY_HOOK_STEP, record),
                lambda _: "ok",
            )

        release = self.steps.run(
            "release", record.id, lambda: self._build_release(record, work_tree), lambda path: str(path)
        )
        self._check_lock()
        if not (self.request.skip_backup or self.request.secondary):
            self.steps.run(
                "snapshot",
                "pre-deploy",
                lambda: self._pre_deploy_snapshot(record, old_release),
                lambda snapshot_id: snapshot_id[:8],
            )
            self.history.save(record)
        self._check_lock()
        if self.config.app.migrate and not (self.request.skip_migrations or self.request.secondary):
            self.steps.run("migrate", self.config.app.migrate, lambda: self._migrate(record, release), lambda r: r)
            self.history.save(record)
        self._check_lock()
        self.plans = plan_components(self.config, release, self.layout.shared, new_slot)
        self.steps.run("start", f"slot {new_slot}", lambda: self._start(record, new_slot, release), lambda r: r)
        self._check_lock()
        self.steps.run("smoke", "", lambda: self._smoke(record, release), lambda r: r)
        if self.config.deploy.hooks.get("pre-switch"):
            self.steps.run(
                "pre-switch hook",
                self.config.deploy.hooks["pre-switch"],
                lambda: self._run_tracked_hook("pre-switch", "pre-switch hook", record),
                lambda _: "ok",
            )
        if self.plans:
            # Before the barrier: past it, every host of a multi-host deploy switches. Without a
            # traffic component nothing switches, but the retire stops the old release's workers:
            # a new worker that died must fail the deploy before that, not be reported deployed.
            self.steps.run(
                PRE_SWITCH_CHECK_STEP, f"slot {new_slot}", lambda: self._check_before_switch(new_slot), lambda r: r
            )
        self._barrier("switch", record)
        self._check_lock()
        if self.plans:
            # The new slot becomes the active one and takes the traffic. An app of workers only has
            # no traffic to move, but the switch still matters: the next deploy starts beside the
            # active slot, and an undo or a rollback switches back to the old one.
            workers_only = "" if traffic_component(self.config) is not None else " (workers only)"
            self.steps.run(
                "switch", f"to slot {new_slot}{workers_only}", lambda: self._switch(new_slot, old_slot), lambda r: r
            )
            # Workers are watched too, before the retire barrier and the retire that stops the old
            # release's workers: one that dies 10 s after the switch rolls back to them.
            self.steps.run(
                "watch", f"{self.config.deploy.watch_seconds:.0f} s", lambda: self._watch(new_slot), lambda r: r
            )
        self._barrier("retire", record)
        self._check_lock()
        self.steps.run("retire", f"slot {old_slot or '(none)'}", lambda: self._retire(old_slot, record), lambda r: r)
        # Done: the new release serves and the old slot is retired. Undoing now would stop the
        # slot with the traffic and restore the pre-deploy data under it, losing every write since.
        self.steps.settle()
        record.outcome = "succeeded"
        record.finished_at = time.time()
        record.steps = [step.to_document() for step in self.steps.records]
        self.history.save(record)
        run_hook(self.context, "post-deploy", record, self.reporter)

    # -- steps ---------------------------------------------------------------------------------

    def _build_release(self, record: OperationRecord, work_tree: Path) -> Path:
        assert record.commit is not None
        release = build_release_directory(work_tree, self.config.app, self.layout, record.id, record.commit)
        self.release_directory = release
        self.steps.on_undo("release", lambda: self._discard_release(release))
        if self.config.app.build:
            command = Command(
                Command.parse(self.config.app.build).argv,
                env=app_environment(self.config, release, self.layout.shared),
                cwd=str(release),
            )
            outcome = self._run_tracked(record, "release", command, 3600)
            if not outcome.ok:
                raise UsageError(f"the build failed: {outcome.describe_failure()}")
        return release

    def _run_tracked(self, record: OperationRecord, step: str, command: Command, timeout: float) -> CommandOutcome:
        """run_user_command, with the command in the record while it runs: killed with SIGKILL,
        this deploy cannot stop it, and the command (a migration) would go on changing the data
        under the release that serves; the clean-up stops it (see clean_up_abandoned).

        The record names the command by a random mark, saved before it starts and given to it in
        its environment, then by its process group once it runs: a deploy killed between the
        start and the second save leaves a command whose group nobody knows, but the mark still
        finds it (and every child it started). Not called a token: the history redacts those."""
        mark = secrets.token_hex(8)
        record.running_command = {"step": step, "mark": mark}
        self.history.save(record)
        marked = replace(command, env={**(command.env or {}), COMMAND_MARK_VARIABLE: mark})

        def started(group: CommandGroup) -> None:
            kill_point(f"command-started {step}")  # tests: a kill -9 before the group is saved
            record.running_command = {"step": step, "mark": mark, **group.to_document()}
            self.history.save(record)

        try:
            return run_user_command(marked, timeout=timeout, on_started=started)
        finally:
            self._forget_command(record)

    def _tracked_runner(self, record: OperationRecord, step: str) -> Callable[[Command, float], CommandOutcome]:
        """How a hook or a smoke test of `step` runs its command: tracked, as _run_tracked."""
        return lambda command, timeout: self._run_tracked(record, step, command, timeout)

    def _forget_command(self, record: OperationRecord) -> None:
        if record.running_command is not None:
            record.running_command = None
            self.history.save(record)

    def _run_tracked_hook(self, name: str, step: str, record: OperationRecord) -> None:
        run_hook(self.context, name, record, self.reporter, run=self._tracked_runner(record, step))

    def _discard_release(self, release: Path) -> None:
        """A release that never served is of no use; keep the disk for ones that did.

        Not when stopping it or moving the traffic back failed: it may still run, with the
        traffic, and its processes could not start again without their directory."""
        failed = [step for step in self.steps.undo_failed() if step in ("start", "switch")]
        if failed:
            self.reporter.warn(f"kept {release}: it may still run (undo {' and '.join(failed)} failed)")
            return
        shutil.rmtree(release, ignore_errors=True)

    def _pre_deploy_snapshot(self, record: OperationRecord, old_release: dict[str, Any] | None) -> str:
        code = None
        if old_release is not None and Path(old_release["release_directory"]).is_dir():
            directory = Path(old_release["release_directory"])
            # The manifest names the release, as a snapshot of `current -> releases/X` does.
            code = PreparedCode(kind="release-directory", release_directory=directory, release=directory.name)
        request = SnapshotRequest(
            project_directory=self.context.directory,
            environment=self.context.environment,
            message=f"before deploy {record.id}",
            tags=(DEPLOY_TAG_PREFIX + record.id,)
            + ((RELEASE_TAG_PREFIX + str(old_release["release_id"]),) if old_release else ()),
            kind="pre-deploy",
        )
        existing = {name: db for name, db in self.config.databases.items() if not not_created_yet(db.url)}
        config = self.config.model_copy(update={"databases": existing})
        with self.context.project.access.session(exclusive=False) as repository:
            created = create_snapshot(repository, config, request, code)
            for warning in created.manifest.warnings:
                self.reporter.warn(f"pre-deploy snapshot {created.snapshot.short_id}: {warning}")
            if self.policy.verify_level != "none":
                from lockstep.pipeline.verify import verify_snapshot

                servers = {name: live_access(self.config, name) for name in self.config.databases}
                result = verify_snapshot(repository, created.snapshot, self.policy.verify_level, servers=servers)
                if not result.ok:
                    found = "; ".join(finding.message for finding in result.findings[:3])
                    raise UsageError(
                        f"the pre-deploy snapshot {created.snapshot.short_id} failed verification: {found}",
                        "fix the repository (lockstep repo check) before deploying",
                    )
        record.snapshot_id = created.snapshot.id
        return created.snapshot.id

    def _migrate(self, record: OperationRecord, release: Path) -> str:
        assert self.config.app.migrate is not None
        record.migration_before = migration_version(self.context)
        record.migrations_ran = True  # from here on the data may have changed, even if it fails
        # Stored before the command runs: a deploy killed now leaves a migration that goes on
        # (or stops half-way), and whoever cleans up must learn that the data may have moved.
        self.history.save(record)
        self.steps.on_undo("migrate", lambda: self._undo_migrations(record))
        command = Command(
            Command.parse(self.config.app.migrate).argv,
            env=app_environment(self.config, release, self.layout.shared),
            cwd=str(release),
        )
        outcome = self._run_tracked(record, "migrate", command, 3600)
        if not outcome.ok:
            raise UsageError(f"the migration failed: {outcome.describe_failure()}")
        record.migration_after = migration_version(self.context)
        return f"{record.migration_before or 'none'} -> {record.migration_after or 'none'}"

    def _undo_migrations(self, record: OperationRecord) -> None:
        """Bring the data back to the pre-deploy snapshot, as the environment's policy says."""
        if "switch" in self.steps.undo_failed() and record.snapshot_id is not None:
            # The traffic did not go back (the agent died, say): the new release may still serve,
            # and the old data under it would break it. Going back is the operator's call.
            self.reporter.warn(
                "the data stays as migrated: the traffic could not be moved back, so the new release may still "
                f"serve; to go back: lockstep rollback --force, then lockstep snapshot restore {record.snapshot_id[:8]}"
            )
            return
        if record.snapshot_id is None:
            self.reporter.warn("migrations ran but there is no pre-deploy snapshot (--skip-backup): the data stays")
            return
        if record.migration_after is not None and record.migration_after == record.migration_before:
            # The migration command succeeded and the version did not move: nothing was migrated,
            # and restoring would only throw away what users wrote during the deploy.
            self.reporter.info(f"the migrations changed nothing (version {record.migration_after}): data kept")
            return
        policy = self.policy.data_rollback
        with self.context.project.access.session(exclusive=False) as repository:
            snapshot = repository.find_snapshot(record.snapshot_id)
            diffs = describe_discarded(repository, snapshot, self.config)
            if not any(diff.changed_tables for diff in diffs):
                self.reporter.info(f"the data has not changed since pre-deploy snapshot {snapshot.short_id}: kept")
                return
            lines = summarize_discarded(diffs)
            self.reporter.info(
                f"restoring the data of pre-deploy snapshot {snapshot.short_id} discards:\n  " + "\n  ".join(lines)
            )
            if policy == "never":
                self.reporter.warn("data_rollback = never: the migrated data stays; restore it yourself if needed")
                return
            if policy == "ask" and not self.reporter.confirm("Restore the databases to the pre-deploy snapshot?"):
                self.reporter.warn(
                    f"the data was not restored; to do it later: lockstep snapshot restore {snapshot.short_id}"
                )
                return
            not_held = self._hold_traffic(record)
            not_stopped = self._stop_workers(record)
            try:
                if self.request.coordinated is not None and not self._every_host_holds(
                    snapshot.short_id, not_held, not_stopped
                ):
                    return
                result = restore_snapshot_data(
                    repository, snapshot, self.config, self.context.directory, self.context.environment
                )
            finally:  # restored or not, as the traffic is released to the old release after it
                self.worker_pause.restart()
        record.data_restored = True
        for item in result.restored:  # grants to roles this server no longer has
            for sentence in item.left_out:
                self.reporter.warn(f"database {item.name}: left out: {sentence}")
        restored = ", ".join(f"{item.name} ({counted(item.rows, 'row')})" for item in result.restored)
        self.reporter.info(
            f"data restored from {snapshot.short_id}: {restored}; the data as it was before the restore is in "
            f"snapshot {(result.pre_restore_snapshot_id or '')[:8]}"
        )

    def _start(self, record: OperationRecord, slot: str, release: Path) -> str:
        self.steps.on_undo("start", lambda: self.agent.stop_slot(slot))
        self.agent.start_slot(slot, record.id, release, record.commit, [plan.launch_document() for plan in self.plans])
        # Exits from the start of the health gate on count: before the switch (_check_before_switch),
        # and in the watch. Not from its end: it checks one component after the other, and one that
        # exits once its own gate passed, while the next one's runs, went unseen.
        since = int(self.agent.status()["last_event_id"])
        gate = health_gate(self.agent, slot, self.plans)
        self.exits = SlotExits(self.agent, slot, self.config.deploy.watch_max_exits, since=since)
        return gate

    def _check_before_switch(self, slot: str) -> str:
        assert self.exits is not None
        components = [plan.name for plan in self.plans]
        return check_before_switch(self.agent, slot, components, self.exits, self.reporter)

    def _smoke(self, record: OperationRecord, release: Path) -> str:
        checks = self.config.deploy.smoke
        if not checks:
            return "none configured"
        component = traffic_component(self.config)
        port = next((plan.port for plan in self.plans if plan.name == component), None)
        env = app_environment(self.config, release, self.layout.shared)
        failures = []
        for check in checks:
            result = run_smoke_check(check, self.config, port, release, env, self._tracked_runner(record, "smoke"))
            self.reporter.info(f"smoke {result.name}: {'ok' if result.ok else 'FAILED'} ({result.detail})")
            if not result.ok:
                failures.append(f"{result.name}: {result.detail}")
        if failures:
            raise UsageError("smoke tests failed: " + "; ".join(failures))
        return f"{len(checks)} passed"

    def _switch(self, new_slot: str, old_slot: str | None) -> str:
        if old_slot is not None:
            self.steps.on_undo("switch", lambda: self._switch_back(old_slot))
        else:  # the first deploy: nothing to switch back to, but the slot must give up the traffic
            self.steps.on_undo("switch", lambda: self.agent.withdraw_traffic(new_slot))
        result = self.agent.switch(new_slot)
        if result.get("port") is None:
            return f"slot {new_slot} active, no traffic to move"
        return f"{float(result.get('seconds', 0)) * 1000:.0f} ms"

    def _switch_back(self, slot: str) -> None:
        self.agent.switch(slot)

    def _watch(self, slot: str) -> str:
        return watch_slot(self.agent, slot, self.plans, self.config.deploy, self.reporter, self.exits)

    def _retire(self, old_slot: str | None, record: OperationRecord) -> str:
        protected = {record.id}
        if old_slot is None:
            prune_releases(self.layout, self.config.app.keep_releases, protected)
            return "nothing to retire"
        status = self.agent.status()
        old_release = status["slots"][old_slot]["release"]
        if old_release:
            protected.add(old_release["release_id"])
        drained = self.agent.wait_drained(old_slot, self.config.traffic.drain_timeout)
        # The old slot's traffic component stays warm for a rollback in under a second; what
        # has no port (workers) must not run two versions at once, so it stops now.
        component = traffic_component(self.config)
        others = [plan.name for plan in self.plans if plan.name != component]
        if component is None:  # workers only: nothing stays warm, so the whole slot goes
            self.agent.stop_slot(old_slot)
        elif others:
            self.agent.stop_slot(old_slot, others)
        self.steps.forget_undo("switch")
        removed = prune_releases(self.layout, self.config.app.keep_releases, protected)
        retired = (
            f"slot {old_slot} drained{'' if drained else ' (timed out)'}, kept warm"
            if component is not None
            else f"slot {old_slot} stopped (workers only: nothing kept warm)"
        )
        return retired + (f"; removed {len(removed)} old releases" if removed else "")

    # -- failure -------------------------------------------------------------------------------

    def _describe_failure(self, error: BaseException) -> tuple[str | None, str]:
        """The step that failed and why, redacted."""
        if isinstance(error, KeyboardInterrupt):
            reason = "interrupted (Ctrl-C, SIGTERM or SIGHUP)"
        elif isinstance(error, LockstepError):
            reason = str(error)
        else:  # a bug: still unwound, and named so it can be reported
            reason = f"internal error {type(error).__name__}: {error}"
        step = error.step if isinstance(error, StepFailed) else self.steps.interrupted_step()
        return step, self.redactor.redact(reason)

    def _keep_release(self, record: OperationRecord, error: BaseException) -> DeployFailed:
        """A coordinated deploy failing after its retire barrier's "go": nothing is undone.

        Every host passed its watch window and was told to keep the new release; the others may
        have retired their old slot already, and the primary's unwind would restore the data
        under their new release. Undoing here alone would leave the hosts on different releases,
        so this host keeps serving the new release too, and says what is left unfinished.
        """
        from lockstep.pipeline.multi_host_retire import keep_release
        from lockstep.pipeline.unfinished_retire import retire_left

        old_slot = other_slot(record.slot) if record.slot else None
        return keep_release(
            record,
            self.steps,
            self._describe_failure(error),
            (self.history, self.redactor),
            retire_left(old_slot, record.previous_release_id),
            "its old slot may not be retired (workers of both releases may run)",
        )

    def _fail(self, record: OperationRecord, error: BaseException) -> None:
        step, reason = self._describe_failure(error)
        record.failed_step = step
        record.reason = reason
        self.reporter.warn(f"deploy failed{f' at {step}' if step else ''}: {reason}; undoing")
        if isinstance(error, StepFailed) and step == PRE_DEPLOY_HOOK_STEP:
            # Nothing was changed yet: a refusal (exit 2, outcome "failed"), not a rollback.
            record.outcome = "failed"
            record.finished_at = time.time()
            record.steps = [item.to_document() for item in self.steps.records]
            self.history.save(record)
            run_hook(self.context, "deploy-failed", record, self.reporter)
            raise DeployRefused(
                f"deploy {record.id} refused by its pre-deploy hook: {reason}; nothing was changed",
                "the release that served before still serves",
                result=RedactedRecord(record, self.redactor),
            ) from None
        not_held: str | None = None
        if self._restores_without_asking(record) or self.request.hold_on_unwind:
            # Before traffic goes back: the old release must not meet migrated data, nor (on
            # the other hosts of a multi-host deploy) write while the primary restores it.
            not_held = self._hold_traffic(record)
        try:
            undone = self.steps.unwind()
        finally:
            if self.request.hold_on_unwind:
                self._hold_until_restored(record, not_held)
            self._release_traffic()
        record.outcome = "rolled-back" if undone else "failed"
        record.finished_at = time.time()
        record.steps = [item.to_document() for item in self.steps.records]
        self.history.save(record)
        run_hook(self.context, "deploy-failed", record, self.reporter)
        data = " and the data restored" if record.data_restored else ""
        if undone:
            serving = "the previous release serves" if record.previous_release_id else "nothing was serving before"
            raise DeployRolledBack(
                f"deploy {record.id} failed{f' at {step}' if step else ''}: {reason}; rolled back{data}; {serving}",
                "see `lockstep history` and the release's logs",
                result=RedactedRecord(record, self.redactor),
            ) from None
        raise DeployFailed(
            f"deploy {record.id} failed{f' at {step}' if step else ''}: {reason}; and undoing it failed too",
            "see the undo errors above; `lockstep status` shows what serves now",
            result=RedactedRecord(record, self.redactor),
        ) from None

    def _restores_without_asking(self, record: OperationRecord) -> bool:
        """Whether the unwind is about to restore the data with nobody asked (policy auto)."""
        moved = record.migration_after is None or record.migration_after != record.migration_before
        return (
            record.migrations_ran and record.snapshot_id is not None and moved and self.policy.data_rollback == "auto"
        )

    def _hold_traffic(self, record: OperationRecord) -> str | None:
        """Hold traffic for the data restore; a hold that fails does not stop the undo, it is said.
        None when held (or nothing serves, so nothing needs holding), else why not."""
        if traffic_component(self.config) is None or record.previous_release_id is None:
            return None  # nothing serves: nothing to hold
        if self.traffic_hold is not None and self.traffic_hold.held:
            return None  # held since the unwind began
        if self.traffic_hold is None:
            self.traffic_hold = TrafficHold(self.agent, self.config.traffic, self.reporter, record)
        try:
            detail = self.traffic_hold.hold()
        except LockstepError as error:
            self.reporter.warn(f"traffic could not be held during the data restore: {error}")
            return str(error)
        if not self.traffic_hold.held:
            return detail
        self.reporter.info(f"traffic held for the data restore: {detail}")
        return None

    def _stop_workers(self, record: OperationRecord) -> str | None:
        """Stop the workers of the release that serves again after the unwind, for the data
        restore (worker_pause.py); None when none runs, else why some may. A single machine
        restores anyway, loudly, as when its traffic cannot be held; a multi-host deploy does not."""
        if record.slot is None or record.previous_release_id is None:
            return None  # nothing served before: no workers of an older release
        not_stopped = self.worker_pause.stop(
            other_slot(record.slot), lambda paused: self._remember(record, paused), self.request.coordinated
        )
        if not_stopped is not None:
            self.reporter.warn(
                f"THE WORKERS OF THE PREVIOUS RELEASE MAY STILL RUN: {not_stopped}"
                + ("" if self.request.coordinated is not None else "; what they write during the data restore is lost")
            )
        return not_stopped

    def _remember(self, record: OperationRecord, paused: dict[str, Any] | None) -> None:
        """The record says which workers are stopped, for the clean-up if this process is killed."""
        record.paused_workers = paused
        self.history.save(record)

    def _every_host_holds(self, snapshot: str, not_held: str | None, not_stopped: str | None = None) -> bool:
        """A multi-host deploy's primary, about to restore: only while every host holds its traffic
        and has stopped its workers (pipeline/coordination.py, the restore barrier). Else the data
        stays as migrated: the other hosts' old releases serve on it, and a restore under them
        would lose their writes."""
        from lockstep.pipeline.coordination import GO, RESTORE_BARRIER, wait_for_word

        assert self.request.coordinated is not None
        if not_held is not None:
            why = f"this host's traffic could not be held ({not_held})"
        elif not_stopped is not None:
            why = f"this host's workers could not be stopped ({not_stopped})"
        else:
            word = wait_for_word(RESTORE_BARRIER, self.request.coordinated, {"unwinding": True})
            if word == GO:
                return True
            why = (
                "the orchestrator was lost before every host confirmed it holds its traffic"
                if word is None
                else "not every host could hold its traffic and stop its workers (the orchestrator's output names it)"
            )
        self.reporter.warn(
            f"THE DATA WAS NOT RESTORED: {why}, and restoring while a host serves or runs its workers would lose "
            f"their writes; the databases stay as migrated, under the previous release. To restore them once no "
            f"host serves: lockstep snapshot restore {snapshot}"
        )
        return False

    def hold_only(self) -> OperationRecord:
        """A host the orchestrator never started (the primary failed before its switch barrier),
        while the primary's unwind restores the data: it deploys nothing, but its release serves
        and its workers write into the shared databases, so it holds its traffic and stops those
        workers until the restore is over (the held barrier), as a secondary's unwind does. Under
        the orchestrator's lock, which it joins; its record marks the stopped workers, for the
        clean-up if it is killed meanwhile."""
        assert self.request.coordinated is not None
        self.steps.run("lock", self.context.environment, lambda: self._join_lock(), lambda _: "joined")
        status = self.agent.status()
        active = status.get("active_slot")
        serving = status["slots"][active]["release"] if active else None
        record = OperationRecord.started_now(
            self.request.coordinated,
            "deploy",
            self.context.environment,
            ref=self.request.ref,
            commit=self.request.ref,
            message=self.request.message,
            release_id=None,
            previous_release_id=serving["release_id"] if serving else None,
            coordinated=self.request.coordinated,
        )
        bind_context(self.reporter, deploy_id=record.id, env=record.environment)
        self.history.save(record)
        not_held = self._hold_traffic(record)
        try:
            not_stopped = (
                self.worker_pause.stop(str(active), lambda paused: self._remember(record, paused), record.coordinated)
                if serving is not None
                else None
            )
            self._answer_held(not_held, not_stopped)
        finally:
            self._release_traffic()
        record.outcome = "rolled-back"
        record.reason = (
            "not deployed here: the primary failed before this host was started; it held its traffic and stopped "
            "its workers while the primary's unwind restored the data"
        )
        record.finished_at = time.time()
        self.history.save(record)
        return record

    def _hold_until_restored(self, record: OperationRecord, not_held: str | None) -> None:
        """A secondary's unwind, undone: stop the workers of the release that serves again, tell
        the orchestrator whether its traffic is held and its workers stopped, and keep them so
        until it says the primary's data restore is over (the held barrier); then start them again."""
        self._answer_held(not_held, self._stop_workers(record))

    def _answer_held(self, not_held: str | None, not_stopped: str | None) -> None:
        """At the held barrier: say whether the traffic is held and the workers stopped, wait for
        the orchestrator's word (the primary's restore is over, or will not run), then start the
        workers again."""
        from lockstep.pipeline.coordination import GO, HELD_BARRIER, wait_for_word

        assert self.request.coordinated is not None
        said = {
            "unwinding": True,
            "held": not_held is None,
            "reason": not_held,
            "workers_stopped": not_stopped is None,
            "workers_reason": not_stopped,
        }
        try:
            word = wait_for_word(HELD_BARRIER, self.request.coordinated, said)
            if word is None:
                self.reporter.warn(
                    "lost the orchestrator while holding the traffic and the workers for the primary's data restore: "
                    "releasing them now; that restore may still run"
                )
            elif word != GO:
                self.reporter.warn(f"the orchestrator said {word} while the traffic was held for the data restore")
        finally:
            self.worker_pause.restart()

    def _release_traffic(self) -> None:
        if self.traffic_hold is None or not self.traffic_hold.held:
            return
        try:
            self.reporter.info(self.traffic_hold.release())
        except LockstepError as error:
            self.reporter.warn(
                f"the traffic hold was not released ({error}); the proxy ends it when this command exits"
            )


def health_gate(agent: AgentClient, slot: str, plans: list[ComponentPlan]) -> str:
    """Wait until every component of the slot passes its health check N times in a row."""
    results = []
    for plan in plans:

        def alive(component: str = plan.name) -> bool:
            return _component_running(agent, slot, component)

        def tail(component: str = plan.name) -> str:
            return _component_log_tail(agent, slot, component)

        if plan.health is None:
            time.sleep(min(2.0, plan.start_timeout))
            if not alive():
                raise UsageError(f"{plan.name} exited right after starting; its log ends:\n{tail()}")
            results.append(f"{plan.name} running")
            continue
        result = wait_until_healthy(
            plan.health,
            passes_required=plan.passes,
            interval=plan.interval,
            timeout=plan.start_timeout,
            process_alive=alive,
            log_tail=tail,
        )
        if not result.ok:
            raise UsageError(f"{plan.name} in slot {slot} is not healthy: {result.reason}")
        results.append(f"{plan.name} healthy in {result.elapsed:.1f} s")
    return "; ".join(results)


def _slot_process(agent: AgentClient, slot: str, component: str) -> dict[str, Any] | None:
    for process in agent.status()["slots"][slot]["processes"]:
        if process["component"] == component:
            return dict(process)
    return None


def _component_running(agent: AgentClient, slot: str, component: str) -> bool:
    process = _slot_process(agent, slot, component)
    return bool(process and process["running"] and not process["crash_looped"])


def _component_log_tail(agent: AgentClient, slot: str, component: str) -> str:
    from lockstep.runtimes.local import log_tail

    process = _slot_process(agent, slot, component)
    if not process or not process.get("log"):
        return ""
    return log_tail(Path(process["log"]), 15)


def watch_slot(
    agent: AgentClient,
    slot: str,
    plans: list[ComponentPlan],
    deploy: Any,
    reporter: Reporter,
    exits: SlotExits | None = None,
) -> str:
    """Watch the new slot: exits of its processes, a crash loop, consecutive failed health checks,
    or the proxy's error rate (none for an app of workers only: no port, no requests).

    A release that crashes every 20 s and is restarted each time serves most requests, so health
    checks and the error rate may pass: its exits are counted instead (`exits`, counting since its
    health gate: pipeline/slot_exits.py), and more than `watch_max_exits` (default 0, Argo
    Rollouts' failureLimit idea) fail the watch.
    """
    deadline = time.monotonic() + deploy.watch_seconds
    exits = exits if exits is not None else SlotExits(agent, slot, deploy.watch_max_exits)
    failures = {plan.name: 0 for plan in plans}
    port = next((plan.port for plan in plans if plan.port is not None), None)
    baseline = _upstream_counters(agent, port)
    checks = 0
    while time.monotonic() < deadline:
        exits.check(reporter, "in the watch window")
        for plan in plans:
            if plan.health is None:
                ok = _component_running(agent, slot, plan.name)
                reason = "not running"
            else:
                result = run_check(plan.health)
                ok, reason = result.ok, result.reason
            failures[plan.name] = 0 if ok else failures[plan.name] + 1
            if failures[plan.name] >= deploy.watch_failures:
                raise UsageError(
                    f"{plan.name} failed {failures[plan.name]} health checks in a row in the watch window: {reason}"
                )
        requests, errors = _upstream_counters(agent, port)
        requests -= baseline[0]
        errors -= baseline[1]
        if requests >= deploy.watch_min_requests and errors / requests > deploy.watch_error_rate:
            raise UsageError(
                f"{errors} of {requests} requests failed in the watch window "
                f"({errors / requests:.0%}, the limit is {deploy.watch_error_rate:.0%})"
            )
        checks += 1
        time.sleep(min(WATCH_INTERVAL, max(0.0, deadline - time.monotonic())))
    exits.check(reporter, "in the watch window")  # an exit in the last round's sleep counts too
    requests, errors = _upstream_counters(agent, port)
    within = f"; {exits.total} exit(s) within the limit of {exits.limit}" if exits.total else ""
    if port is None:  # workers only: no proxy counts their requests
        return f"{counted(checks, 'round')} of checks passed (workers only: no requests to count){within}"
    served = f"{counted(requests - baseline[0], 'request')}, {counted(errors - baseline[1], 'error')}"
    return f"{counted(checks, 'round')} of checks passed; {served}{within}"


def _upstream_counters(agent: AgentClient, port: int | None) -> tuple[int, int]:
    if port is None:
        return 0, 0
    for upstream in agent.status()["traffic"]["upstreams"]:
        if upstream["port"] == port:
            return int(upstream["requests"]), int(upstream["errors"])
    return 0, 0


class SlotControl(Protocol):
    """What cleaning up needs of the agent: the CLI's client, or the agent's own service."""

    def status(self) -> dict[str, Any]: ...

    def stop_slot(self, slot: str, components: list[str] | None = None) -> None: ...

    def switch(self, slot: str) -> dict[str, Any]: ...

    def events(self, since_id: int) -> list[dict[str, Any]]: ...


def clean_up_abandoned(
    context: EnvironmentContext, record: OperationRecord, agent: SlotControl, history: History, reporter: Reporter
) -> None:
    """Finish what a killed deploy left: its slot stops unless it has the traffic; mark it interrupted.

    When it has the traffic (killed in or after the switch), the release stays, but the other
    slot's workers stop, as the deploy's retire step would have done: two releases' workers must
    not run side by side. Unless it was a host's part of a multi-host operation killed before its
    retire "go": the other hosts undo theirs, so it switches back too. The agent's watch,
    `lockstep status` and the next deploy may all find the same record: under the history's
    clean-up lock, only one that still finds it abandoned cleans it up.
    """
    with history.clean_up_lock() as held:
        if not held:
            return  # another clean-up kept it this long: it does this one
        current = history.get(record.id)
        if current is None or current.outcome != "running":
            return  # cleaned up by another in the meantime
        _clean_up_dead(context, current, agent, history, reporter)


def _clean_up_dead(
    context: EnvironmentContext, record: OperationRecord, agent: SlotControl, history: History, reporter: Reporter
) -> None:
    step = _running_step(record)
    where = f" in its {step} step" if step else ""
    reporter.warn(
        f"{record.operation} {record.id} (pid {record.pid}) was interrupted{where} and left unfinished; cleaning up"
    )
    # First of all: a migration it ran goes on without it, and would change the schema under
    # the release that serves after this clean-up has declared the deploy dead.
    command = _stop_orphaned_command(record, reporter)
    serving: bool | None = None  # whether its release has the traffic (None: the agent did not say)
    switched_back: str | None = None  # a host's part of a multi-host operation, undone (below)
    try:
        status = agent.status()
        slot = record.slot
        release = status["slots"][slot]["release"] if slot else None
        ours = bool(release and release.get("release_id") == record.release_id)
        serving = bool(slot and ours and status.get("active_slot") == slot)
        if slot and status.get("active_slot") != slot:
            if ours:
                agent.stop_slot(slot)
                reporter.info(f"stopped the interrupted release in slot {slot}")
        elif slot and ours and record.coordinated and not record.retire_go:
            switched_back = _undo_coordinated_switch(agent, status, record, slot, reporter)
            serving = switched_back is None
        elif slot and ours:
            retire_other_slot(context, agent, status, other_slot(slot), reporter)
            holds = "has the traffic" if _has_traffic(context) else "is the active one (workers only)"
            reporter.warn(
                f"the interrupted release {record.release_id} {holds}, without a finished watch window; "
                "run `lockstep rollback` if it should not"
            )
    except LockstepError as error:
        reporter.warn(f"could not clean up the interrupted release: {error}")
    if record.migrations_ran and record.snapshot_id:
        snapshot = record.snapshot_id[:8]
        restore = f"the data before them is in snapshot {snapshot} (lockstep snapshot restore {snapshot})"
        if record.migration_after is None:
            ended = (record.running_command or {}).get("ended") if command == "migrate" else None
            how = {
                STOPPED: "the migration command was stopped before it finished: the migrations may have stopped midway",
                FINISHED: "the migration command had ended by then (finished, or failed)",
            }.get(str(ended), "finished or stopped midway?")
            reporter.warn(f"it was killed while its migrations ran ({how}); {restore}")
        elif record.migration_after != record.migration_before:  # an unchanged version: nothing to restore
            reporter.warn(f"its migrations ran; {restore}")
    data_left = _data_rollback_left_behind(record, serving)
    if data_left is not None:
        reporter.warn(data_left)
    workers_left = resume_paused_workers(record, agent, reporter, _coordinated_deploy_under_way(context, record))
    record.outcome = "interrupted"
    record.finished_at = time.time()
    record.failed_step = record.failed_step or step
    record.steps = [
        {**item, "outcome": "failed", "detail": "killed"} if item.get("outcome") == "running" else item
        for item in record.steps
    ]
    record.reason = record.reason or f"the {record.operation} process died (killed or crashed)"
    if command is not None and record.running_command is not None:
        record.reason += f"; its {command} command {record.running_command['ended']}"
    if switched_back is not None:
        record.reason += f"; {switched_back}"
    if data_left is not None:
        record.reason += f"; {data_left}"
    if workers_left is not None:
        record.reason += f"; {workers_left}"
    _remove_repository_locks_of(context, record, reporter)
    history.save(record)  # last: "interrupted" means the clean-up is over


def _coordinated_deploy_under_way(context: EnvironmentContext, record: OperationRecord) -> str | None:
    """A host of a multi-host deploy killed with its workers stopped for the primary's data
    restore: whether that deploy goes on (its orchestrator's lock), so they must wait for its end."""
    from lockstep.pipeline.coordination import orchestrator_still_holds

    coordinated = (record.paused_workers or {}).get("coordinated")
    return orchestrator_still_holds(context, str(coordinated)) if coordinated else None


def _undo_coordinated_switch(
    agent: SlotControl, status: dict[str, Any], record: OperationRecord, slot: str, reporter: Reporter
) -> str | None:
    """A host's part of a multi-host deploy or rollback killed after its switch, before its retire
    "go": the orchestrator has every other host undo its part, so this one must switch back too,
    or the hosts serve different releases (all or none). The slot it left still runs (nothing is
    retired before that "go"). What it did, for the record; None when it could not switch back."""
    left = other_slot(slot)
    previous = status["slots"][left]["release"]
    if not previous or previous.get("release_id") != record.previous_release_id:
        reporter.warn(
            f"the interrupted {record.operation} {record.id} has the traffic on this host, and slot {left} no "
            f"longer holds release {record.previous_release_id} to switch back to: every other host undid its "
            "part, so check `lockstep status` on each host and deploy or roll back to bring them together"
        )
        return None
    agent.switch(left)
    agent.stop_slot(slot)
    said = (
        f"switched back to release {record.previous_release_id} in slot {left} and stopped slot {slot}, as "
        f"every host of {record.coordinated} undoes its part (this one was killed before its retire go)"
    )
    reporter.warn(said)
    return said


def _data_rollback_left_behind(record: OperationRecord, serving: bool | None) -> str | None:
    """What to say of a `rollback --with-data` killed between its data restore and the switch:
    its unwind would have put the data back, but SIGKILL runs none, and the hold ended with the
    process, so the newer release serves on the older data. Not restored here: requests flow
    again, and a restore under them is the operator's call."""
    if record.operation != "rollback" or record.pre_restore_snapshot_id is None or serving:
        return None
    pre_restore = record.pre_restore_snapshot_id[:8]
    unless = " (unless it has the traffic: the agent could not say)" if serving is None else ""
    return (
        f"it had restored (or begun to restore) the databases for release {record.release_id}, which never got the "
        f"traffic{unless}: release {record.previous_release_id} serves on that data, which may not fit its schema, "
        f"and its workers were stopped; put its data back with `lockstep snapshot restore {pre_restore}` (the "
        "databases just before the rollback), or roll back again with --with-data"
    )


STOPPED = "was still running: the clean-up stopped it before it finished"
FINISHED = "had ended before the clean-up"


def _stop_orphaned_command(record: OperationRecord, reporter: Reporter) -> str | None:
    """Stop the user's command (a migration) the killed operation left running, by its process
    group (SIGTERM, then SIGKILL); notes in the record whether it was still running. Returns the
    step it ran for, None when none ran.

    The groups are the recorded one, and those of the processes that carry the command's mark
    (COMMAND_MARK_VARIABLE): killed after the command started but before it recorded its
    group, the operation left only the mark."""
    running = record.running_command
    if not running or "ended" in running:
        return None
    step = str(running.get("step", "its"))
    try:
        groups = [CommandGroup.from_document(running)] if "pid" in running else []
        mark = running.get("mark")
        if isinstance(mark, str):
            known = {group.pid for group in groups}
            groups += [group for group in groups_marked_with(COMMAND_MARK_VARIABLE, mark) if group.pid not in known]
        stopped = [group.pid for group in groups if stop_command_group(group)]
    except (ValueError, OSError, LockstepError) as error:
        reporter.warn(f"could not stop its {step} command ({running}): {error}; stop it by hand")
        record.running_command = {**running, "ended": f"may still run: stopping it failed ({error})"}
        return step
    record.running_command = {**running, "ended": STOPPED if stopped else FINISHED}
    if stopped:
        which = ", ".join(str(pid) for pid in stopped)
        reporter.warn(f"its {step} command (process group {which}) was still running: stopped it")
    elif groups:
        which = ", ".join(str(group.pid) for group in groups)
        reporter.info(f"its {step} command (process group {which}) had ended before the clean-up")
    else:
        reporter.info(f"its {step} command had ended (or not started) before the clean-up")
    return step


def _remove_repository_locks_of(context: EnvironmentContext, record: OperationRecord, reporter: Reporter) -> None:
    """The repository lock the dead process held (killed mid-snapshot): stale locks block an
    exclusive lock until removed, so the agent's scheduled `forget` would fail until someone ran
    `lockstep repo unlock`. Only that process's, and only when stale (it is gone from this host)."""
    from lockstep.repository.locks import list_locks
    from lockstep.storage.base import FileType

    try:
        repository = context.project.access.open(load_index=False)
    except LockstepError:
        return
    try:
        host = socket.gethostname()
        for lock in list_locks(repository):
            # Its process is gone (a zombie, killed and not yet reaped by its parent, counts as
            # gone): its lock goes now, not when the next command finds it stale.
            if lock.hostname == host and lock.pid == record.pid and not process_alive(lock.pid):
                repository.backend.remove(FileType.LOCK, lock.id)
                reporter.info(f"removed its stale repository lock {lock.id[:8]}")
    except LockstepError as error:
        reporter.warn(f"could not remove its repository lock: {error}; run `lockstep repo unlock`")
    finally:
        repository.close()


def _running_step(record: OperationRecord) -> str | None:
    """The step a killed operation was in, from the progress it stored as each step started."""
    running = [item.get("step") for item in record.steps if item.get("outcome") == "running"]
    return str(running[-1]) if running else None


def _has_traffic(context: EnvironmentContext) -> bool:
    """Whether the app has a component that takes traffic (not an app of workers only)."""
    return any(component.ports for component in context.config.app.components.values())


def retire_other_slot(
    context: EnvironmentContext, agent: SlotControl, status: dict[str, Any], slot: str, reporter: Reporter
) -> list[str]:
    """Stop what runs without traffic in `slot` (workers), keeping its traffic component warm;
    the components stopped."""
    component = traffic_component(context.config)
    running = sorted(
        {
            str(process["component"])
            for process in status["slots"][slot]["processes"]
            if process.get("running") and process["component"] != component
        }
    )
    if running:
        agent.stop_slot(slot, running)
        serving = "the release with the traffic" if component is not None else "the active release (workers only)"
        reporter.info(f"stopped {', '.join(running)} in slot {slot}: {serving} runs its own")
    return running
