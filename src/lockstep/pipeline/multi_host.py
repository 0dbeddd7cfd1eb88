"""`lockstep deploy` to an environment with `hosts`: every host switches, or none does.

Small teams fan out over plain SSH (Kamal, Capistrano, pyinfra); what they lack is the guarantee
that a hook or health check failing on one host does not leave the others switched, serving a
different version (ansistrano #333). The orchestrator, the machine running `lockstep deploy`:

 1. preflight   resolve REF here; reach every host over SSH (host keys checked); the same lockstep
                version; give each host the commit (a `git bundle` over SFTP, fetched into its
                checkout, so hosts need no access to the git remote; only what is new since a commit
                it has, multi_host_bundles.py); run the host's own preflight, which also reports its
                repository ID and project name: every host must use this machine's repository, under
                its project name (the lock and snapshots are the project's)
 2. lock        the environment's lock in the (shared) repository, once, for every host
 3. primary     the first host runs `lockstep deploy COMMIT --coordinated ID` up to its switch
                barrier: it alone takes the pre-deploy snapshot and runs the migrations
 4. hosts       the other hosts (`--secondary`: no snapshot, no migrations) run up to theirs, in parallel
 5. switch      every host is at its switch barrier: "go" to all; each switches and watches
 6. retire      every host is at its retire barrier: "go" to all; each retires its old slot. From
                here on every host keeps the new release, even one that fails (multi_host_retire.py)

Any host failing before that, at any point, sends "abort" to every other host, and each unwinds on its own
(traffic back, new slot stopped; the primary restores the data per policy, as on one machine). A
host whose SSH connection drops (or an orchestrator killed outright) reads end-of-input at its
next barrier, which is an abort too: no host passes a barrier without a "go" that only comes
when every host got there. When the primary's unwind restores the data, every host holds its
traffic and stops its old release's workers until it is done (one not started yet, when the
primary fails first, is started then only to hold: `deploy --hold-only`), and a host that cannot
hold or stop them keeps the restore from starting (the unwind's data step, _coordinate_restore). See
pipeline/coordination.py for the host's side. A host whose lockstep died (killed, its session
lost) is asked afterwards, by a `lockstep status` run there that cleans up what died, whether its
part is undone: every host undid its part only when each said so (multi_host_undo.py).

Secrets never cross SSH: each host reads the repository password from its own configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from lockstep import __version__
from lockstep.actions.environment import EnvironmentContext
from lockstep.config.deploy_model import effective_policy
from lockstep.config.hosts_model import HostTarget, SshConfig
from lockstep.errors import LockstepError, UsageError
from lockstep.exit_codes import ExitCode
from lockstep.notify.dispatcher import Notifier
from lockstep.notify.events import DEPLOY_FAILED, DEPLOY_ROLLED_BACK, DEPLOY_STARTED, DEPLOY_SUCCEEDED
from lockstep.pipeline.code import SHORT_COMMIT_LENGTH
from lockstep.pipeline.coordination import (
    ABORT,
    BARRIER_KEY,
    GO,
    HELD_BARRIER,
    KEEP,
    RESTORE_BARRIER,
    RETIRE_BARRIER,
    SWITCH_BARRIER,
    parse_barrier_document,
)
from lockstep.pipeline.deploy import (
    DeployFailed,
    DeployRefused,
    DeployRequest,
    DeployRolledBack,
    apply_deploy_policy,
)
from lockstep.pipeline.environment_lock import (
    EnvironmentLock,
    LockHolder,
    describe_holder,
)
from lockstep.pipeline.history import History, OperationRecord, RedactedRecord
from lockstep.pipeline.multi_host_bundles import INCOMING_REF, Bundle, CommitBundles, byte_size, object_names
from lockstep.pipeline.multi_host_retire import RetireReport, retire_outcome
from lockstep.pipeline.multi_host_steps import RunningSteps, died_by_signal
from lockstep.pipeline.multi_host_undo import (
    UNCONFIRMED,
    UndoCheck,
    confirm_host,
    confirmed_lines,
    switching_to,
    unconfirmed_line,
    undo_uncertain,
)
from lockstep.pipeline.notifications import notifier_for, operation_event, secrets_redactor, teach_reporter_secrets
from lockstep.pipeline.releases import ResolvedRef, new_deploy_id, resolve_ref
from lockstep.pipeline.steps import Reporter, StepRunner, bind_context
from lockstep.remote import ssh
from lockstep.wording import counted

T = TypeVar("T")

# How long an aborted host may take to unwind (a data restore included) before we stop waiting.
UNWIND_WAIT_SECONDS = 3600.0
DEPLOYED_REF = "refs/lockstep/deployed"
# A host's exit codes that mean it changed nothing (refused in preflight, or the lock was not ours).
_REFUSED = {int(ExitCode.USAGE), int(ExitCode.LOCKED)}


@dataclass
class HostRun:
    """One host's part of the deploy, as the orchestrator sees it."""

    target: HostTarget
    primary: bool
    connection: Any = None
    process: Any = None
    outcome: str = "not started"
    exit_code: int | None = None  # -1 when a signal ended it (asyncssh)
    exit_signal: str | None = None  # "SIGKILL": what ended its lockstep, which then said nothing
    steps: RunningSteps = field(default_factory=RunningSteps)  # as its step events say
    result: dict[str, Any] | None = None
    # Its record of this operation, from its status asked again after the retire "go", when it
    # ended without a result (killed, its connection lost): what it did, the data restore included.
    record_asked_again: dict[str, Any] | None = None
    lost: str | None = None  # why the connection dropped
    # Its lockstep died (killed, its connection lost) before the retire "go": what its clean-up,
    # run from here once the others had undone their part, found (multi_host_undo.py).
    undo: UndoCheck | None = None
    culprit: bool = False  # it failed on its own (the others were aborted because of it)
    waiting_at: str | None = None  # the barrier it announced and has had no word at yet
    said: dict[str, Any] = field(default_factory=dict)  # that barrier's line
    restores_data: bool = False  # the primary said its unwind would restore the data
    # Started only to hold its traffic and stop its workers for the primary's data restore (the
    # primary failed before this host was started): it deploys nothing.
    hold_only: bool = False
    events: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None and self.lost is None

    def failure(self) -> str:
        """What went wrong on this host, in one line."""
        if self.lost is not None:
            return f"the SSH connection was lost ({self.lost}); the host undoes its deploy at its next barrier"
        if self.exit_signal is not None:
            return died_by_signal(self.exit_signal, self.steps, self.waiting_at)
        result = self.result or {}
        step = result.get("failed_step")
        reason = result.get("error") or result.get("reason")
        if reason is None and self.steps.first_failed is not None:  # it has not ended (unwinding)
            step, reason = self.steps.first_failed
        reason = reason or f"exit code {self.exit_code}"
        return f"failed{f' at {step}' if step else ''}: {reason}"

    def failed_step(self) -> str | None:
        """The step it failed at, as it said; killed, the first step its events said failed, else
        the one it was in."""
        if self.exit_signal is not None:
            if self.steps.first_failed is not None:
                return self.steps.first_failed[0]
            if self.steps.current is not None:
                return self.steps.current
        return (self.result or self.record_asked_again or {}).get("failed_step")

    def paused_workers(self) -> dict[str, Any] | None:
        """The workers its data restore stopped that did not start again (its record's mark)."""
        mark = (self.result or self.record_asked_again or {}).get("paused_workers")
        return dict(mark) if isinstance(mark, dict) and mark.get("restart_failed") else None

    def workers_left_stopped(self) -> str | None:
        """What the orchestrator's report says of them: they are stopped, and its agent retries
        (pipeline/paused_workers_retry.py), unless the host keeps them stopped on purpose."""
        mark = self.paused_workers()
        if mark is None:
            return None
        named = ", ".join(str(name) for name in mark.get("components") or [])
        stopped = f"{self.name}: ITS WORKERS {named} OF SLOT {mark.get('slot')} ARE STOPPED"
        if mark.get("kept_stopped"):
            return f"{stopped}, on purpose: {mark['kept_stopped']}"
        why = str(mark["restart_failed"]).splitlines()[0]
        return (
            f"{stopped}: they did not start again after the data restore ({why}); its agent tries again, "
            "backing off (`lockstep status` there)"
        )

    def summary(self) -> dict[str, Any]:
        result = self.result or self.record_asked_again or {}
        return {
            "name": self.name,
            "role": "primary" if self.primary else "secondary",
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "exit_signal": self.exit_signal,
            "slot": result.get("slot"),
            "previous_release_id": result.get("previous_release_id"),
            "snapshot_id": result.get("snapshot_id"),
            "data_restored": result.get("data_restored", False),
            "failed_step": self.failed_step(),
            "detail": self.failure() if self.culprit or self.lost is not None else None,
            "undo": self.undo.to_document() if self.undo is not None else None,
            "paused_workers": self.paused_workers(),
        }


class HostFanOut:
    """What a deploy and a rollback to every host share: the SSH sessions, the barriers, the lock,
    the abort of every host when one fails, and the record of what each host did."""

    operation = "deploy"
    done_event = DEPLOY_SUCCEEDED
    failed_event = DEPLOY_FAILED  # also when it stands on every host but did not finish everywhere
    # A deploy's unwind restores the data only while every host holds (else it keeps the migrated
    # data); a rollback's puts it back in any case (MultiHostRollback).
    restore_needs_every_hold = True

    def __init__(self, context: EnvironmentContext, reporter: Reporter, lock_wait: float, force: bool) -> None:
        self.context = context
        self.lock_wait = lock_wait
        self.force = force
        self.reporter = reporter
        self.config = context.config
        self.ssh = context.config.ssh
        self.policy = effective_policy(self.config.policy, context.environment)
        self.redactor = secrets_redactor(context)
        teach_reporter_secrets(reporter, self.redactor)
        self.history = History(context.layout.history_database, self.redactor)
        self.steps = StepRunner(reporter)
        self.lock: EnvironmentLock | None = None
        self.loop = asyncio.new_event_loop()
        self.waits: list[asyncio.Task[Any]] = []  # what _wait ran: an interrupt leaves it pending
        self.runs = [HostRun(target, primary=index == 0) for index, target in enumerate(self.config.host_targets())]
        self.data_kept: str | None = None  # why an unwind's data restore did not run, when it did not
        self.retire_go_sent = False  # from then on every host keeps the release (multi_host_retire.py)
        bind_context(reporter, env=context.environment)

    def run(self) -> OperationRecord:
        """Run on every host; the record of a success, else the operation's failure. The SSH
        sessions and the event loop are closed however it ends."""
        try:
            return self._run()
        finally:
            self._close()

    def _run(self) -> OperationRecord:
        raise NotImplementedError

    def _wait(self, work: Coroutine[Any, Any, T]) -> T:
        task = self.loop.create_task(work)
        self.waits.append(task)
        return self.loop.run_until_complete(task)

    def _remote_arguments(self, run: HostRun, record: OperationRecord) -> list[str]:
        """The lockstep command line a host runs for its part."""
        raise NotImplementedError

    def _hold_only_arguments(self, record: OperationRecord) -> list[str] | None:
        """The lockstep command line that makes a host never started hold its traffic and stop its
        workers for the primary's data restore; None when the operation has none (a rollback
        starts every host at once)."""
        return None

    def _record_success(self, record: OperationRecord) -> None:
        """What the record says once every host ended past the retire "go" (before the report)."""
        record.outcome = "succeeded"

    def _done_message(self, record: OperationRecord) -> str:
        raise NotImplementedError

    def _failure_event(self, failure: LockstepError) -> str:
        """The notification of a failure before the retire "go" (every host unwound, or tried)."""
        return self.failed_event

    async def _connect_and_check_version(self, run: HostRun) -> None:
        run.connection = await ssh.connect(run.target, self.ssh)
        version = await ssh.run(run.connection, ssh.shell_command(run.target, self.ssh, ["--version"]), timeout=60)
        if version.exit_status != 0:
            raise UsageError(
                f"host {run.name}: `{self.ssh.command} --version` in {run.target.project_dir} failed: "
                f"{(version.stderr or version.stdout).strip()[-300:]}",
                "install lockstep there, or set ssh.command to how it runs",
            )
        remote_version = version.stdout.strip().split()[-1] if version.stdout.strip() else "?"
        if remote_version != __version__:
            raise UsageError(
                f"host {run.name} runs lockstep {remote_version}, this machine {__version__}",
                "run the same lockstep version on every host and here",
            )

    async def _check_every_host(self, check: Callable[[HostRun], Awaitable[None]]) -> None:
        """Run `check(run)` on every host at once; refuse (exit 2) with one line per host that failed."""
        checked = await asyncio.gather(*(check(run) for run in self.runs), return_exceptions=True)
        problems = []
        for run, outcome in zip(self.runs, checked, strict=True):
            if isinstance(outcome, LockstepError):
                problems.append(outcome.message + (f": {outcome.hint}" if outcome.hint else ""))
            elif isinstance(outcome, BaseException):
                problems.append(f"host {run.name}: {type(outcome).__name__}: {outcome}")
        if problems:
            raise UsageError("preflight failed:\n  - " + "\n  - ".join(problems))

    async def _advance(self, runs: list[HostRun], record: OperationRecord, how: str, until: str | None) -> None:
        """Start (`how` "start") or release (`how` "go") `runs`, and wait until each reaches
        the barrier `until` (None: until it exits with success). Raises naming the hosts that did not."""
        if how == "start":
            await asyncio.gather(*(self._start_host(run, record) for run in runs))
        else:
            for run in runs:
                self._send(run, GO)
        await asyncio.gather(*(self._await_barrier(run, until) for run in runs))
        failed = [run for run in runs if run.outcome == "failed"]
        if failed:
            raise UsageError("; ".join(f"{run.name}: {run.failure()}" for run in failed))

    async def _await_barrier(self, run: HostRun, until: str | None) -> None:
        kind, value = await run.events.get()
        if kind == "barrier" and value == until:
            run.outcome = f"at the {until} barrier"
            return
        if kind == "exit" and until is None and run.exit_code == 0:
            run.outcome = "succeeded"
            return
        run.outcome = "failed"
        run.culprit = True

    async def _start_host(self, run: HostRun, record: OperationRecord) -> None:
        arguments = self._hold_only_arguments(record) if run.hold_only else self._remote_arguments(run, record)
        command = ssh.shell_command(run.target, self.ssh, arguments or [])
        try:
            run.process = await run.connection.create_process(command, encoding="utf-8")
        except Exception as error:
            run.lost = ssh.describe_error(error)
            run.outcome = "failed"
            run.culprit = not run.hold_only  # a hold that could not start failed nothing: the data stays
            await run.events.put(("exit", ""))
            return
        run.outcome = "running"
        run.tasks = [
            self.loop.create_task(self._read_stdout(run)),
            self.loop.create_task(self._relay_progress(run)),
        ]

    async def _read_stdout(self, run: HostRun) -> None:
        """Barrier lines become events; the deploy's --json document is the host's result."""
        try:
            async for line in run.process.stdout:
                said = parse_barrier_document(line)
                if said is not None:
                    run.waiting_at, run.said = str(said[BARRIER_KEY]), said
                    run.restores_data = run.restores_data or bool(said.get("restores_data"))
                    await run.events.put(("barrier", run.waiting_at))
                elif line.strip().startswith("{"):
                    try:
                        run.result = json.loads(line)
                    except ValueError:
                        self.reporter.warn(f"{run.name}: {line.strip()}")
            completed = await run.process.wait(check=False)
            run.exit_signal = ssh.signal_name(completed.exit_signal)
            run.exit_code = completed.exit_status
            if run.exit_code is None:
                run.lost = "the session ended without an exit status"
        except Exception as error:  # asyncssh.Error, OSError: the connection dropped
            run.lost = ssh.describe_error(error) or type(error).__name__
        await self._stderr_read(run)
        await run.events.put(("exit", ""))

    @staticmethod
    async def _stderr_read(run: HostRun) -> None:
        """Its last step events in before its end is told: they say where a killed host was."""
        relay = run.tasks[1] if len(run.tasks) == 2 and run.exit_signal is not None else None
        if relay is not None and relay is not asyncio.current_task():
            await asyncio.wait([relay], timeout=5)

    async def _relay_progress(self, run: HostRun) -> None:
        """The host's JSON progress on stderr, told as ours with the host's name."""
        try:
            async for line in run.process.stderr:
                self._relay(run, line.strip())
        except Exception:  # the stdout reader tells what happened to the connection
            return

    def _relay(self, run: HostRun, line: str) -> None:
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            self.reporter.warn(f"{run.name}: {line}")
            return
        if not isinstance(event, dict):
            return
        run.steps.seen(event)
        kind = event.get("event")
        if kind == "step-finished":
            self.reporter.info(f"{run.name}: {event.get('step')} ok ({event.get('duration')} s) {event.get('detail')}")
        elif kind == "step-failed":
            self.reporter.warn(f"{run.name}: {event.get('step')} failed: {event.get('reason')}")
        elif kind == "warning":
            self.reporter.warn(f"{run.name}: {event.get('message')}")

    def _send(self, run: HostRun, word: str) -> None:
        """One word to the host. An abort leaves its input open: an unwind may have a data step
        still to agree on (pipeline/coordination.py); _end_input closes it after."""
        if not run.running:
            return
        run.waiting_at = None
        try:
            run.process.stdin.write(word + "\n")
        except Exception as error:  # the connection dropped: the host aborts at its barrier anyway
            run.lost = run.lost or ssh.describe_error(error)

    def _end_input(self, run: HostRun) -> None:
        """End of input: whatever the host waits for now, nobody will say it (it unwinds)."""
        if not run.running:
            return
        try:
            run.process.stdin.write_eof()
        except Exception as error:
            run.lost = run.lost or ssh.describe_error(error)

    def _recover_from_interrupt(self) -> None:
        """After Ctrl-C (or any error) out of the event loop, before waiting on it again: the
        waits it cut short are still pending and would take the hosts' events from the waits to
        come (each event is read once), so they are cancelled (only ours: asyncssh runs tasks
        of its own in this loop); and a Ctrl-C raised inside a
        host's reader ends that reader, without which the host's end is never seen, so it starts
        again where the stream is."""
        for task in self.waits:  # cancelling one cancels what it waits for (gather, wait_for)
            task.cancel()
        self.waits = []
        for run in self.runs:
            if not run.running or len(run.tasks) != 2:
                continue
            reader, relay = run.tasks
            if reader.done():
                reader = self.loop.create_task(self._read_stdout(run))
            if relay.done():
                relay = self.loop.create_task(self._relay_progress(run))
            run.tasks = [reader, relay]

    def _unwinding(self, run: HostRun) -> bool:
        """Whether the host waits at a barrier of its unwind's data step (held, restore)."""
        return run.waiting_at is not None and bool(run.said.get("unwinding"))

    async def _reach(self, run: HostRun, barrier: str) -> bool:
        """Wait until the host announces `barrier` in its unwind (True) or ends (False)."""
        while True:
            if run.waiting_at == barrier and self._unwinding(run):
                return True
            if not run.running:
                return False
            await run.events.get()

    async def _until_exit(self, run: HostRun) -> None:
        while run.running:
            await run.events.get()

    async def _coordinate_restore(self, record: OperationRecord) -> None:
        """The unwind's data step (pipeline/coordination.py): the primary restores the data only
        while every other host holds its traffic and has stopped its workers, and the holds end
        (the workers start again) once it is done. A host that does not hold, or whose workers may
        still run, keeps the migrated data where it is: restoring under a host that writes loses
        what it writes meanwhile, and a restore can be done later; those writes cannot. A host not
        started (the primary failed before its switch barrier) is started now only to hold
        (_start_holding); one where that does not start, or ends without holding, counts as one
        that does not hold: its release serves and its workers write all along."""
        primary, others = self.runs[0], self.runs[1:]
        if await self._reach(primary, RESTORE_BARRIER):
            await self._start_holding([run for run in others if run.process is None and run.lost is None], record)
            not_holding = []
            for run in others:
                if run.process is None:
                    session = f" (its session could not start: {run.lost})" if run.lost else ""
                    serving = "its release serves and its workers run"
                    not_holding.append(f"{run.name} (it was not started{session}: {serving})")
                elif not await self._reach(run, HELD_BARRIER):
                    ended = run.failure() if run.lost or run.hold_only else "it ended without holding"
                    not_holding.append(f"{run.name} ({ended})")
                else:
                    not_holding.extend(self._not_quiet(run))
            if not_holding and not self.restore_needs_every_hold:
                self.reporter.warn(
                    f"{primary.name} puts the data back, though not every host confirmed it undid its part and holds: "
                    + ", ".join(not_holding)
                )
                self._send(primary, GO)
            elif not_holding:
                self.data_kept = (
                    "THE DATA WAS NOT RESTORED: not every host held its traffic and stopped its workers for the "
                    "primary's restore: "
                    + ", ".join(not_holding)
                    + "; the databases stay as migrated (see the primary's output for the snapshot to restore "
                    "once no host serves)"
                )
                self.reporter.warn(self.data_kept)
                self._send(primary, KEEP)
            else:
                self.reporter.info(
                    f"{primary.name}: every host holds its traffic and has stopped its workers; restoring the data"
                )
                self._send(primary, GO)
            await self._until_exit(primary)
        for run in others:
            if run.process is not None and await self._reach(run, HELD_BARRIER):
                self._send(run, GO)  # the restore is over (or never ran): release

    async def _start_holding(self, never_started: list[HostRun], record: OperationRecord) -> None:
        """Start the hosts never started (the primary failed first) only to hold for its restore."""
        if not never_started or self._hold_only_arguments(record) is None:
            return
        self.reporter.info(
            f"{', '.join(run.name for run in never_started)}: never started; holding their traffic and stopping their "
            "workers for the primary's data restore"
        )
        for run in never_started:
            run.hold_only = True
        await asyncio.gather(*(self._start_host(run, record) for run in never_started))

    def _not_quiet(self, run: HostRun) -> list[str]:
        """What the host at its held barrier said keeps it writing during a restore: its traffic
        not held, its workers not stopped (a rollback's host stopped them before: it says nothing)."""
        problems = []
        if not run.said.get("held"):
            problems.append(f"{run.name} (its traffic could not be held: {run.said.get('reason')})")
        if run.said.get("workers_stopped") is False:
            problems.append(f"{run.name} (ITS WORKERS MAY STILL RUN: {run.said.get('workers_reason')})")
        return problems

    def _take_lock(self, record: OperationRecord) -> None:
        repository = self.context.project.access.open(load_index=False)
        from lockstep.repository.documents import DocumentStore

        lock = EnvironmentLock(
            DocumentStore(repository),
            self.context.project.name,
            self.context.environment,
            stale_after=self.config.deploy.lock_stale_after,
        )
        holder = LockHolder.for_this_process(record.id, self.context.environment, self.operation, record.message)

        def warn_stale(previous: LockHolder) -> None:
            self.reporter.warn(f"recovered a stale lock: {describe_holder(previous)}")

        lock.acquire(holder, wait=self.lock_wait, force=self.force, on_stale=warn_stale)
        self.lock = lock
        for abandoned in self.history.abandoned():  # an orchestrator killed outright
            abandoned.outcome = "interrupted"
            abandoned.finished_at = time.time()
            abandoned.reason = abandoned.reason or (
                "the orchestrator died; each host undid its deploy at its next barrier, unless all had passed "
                "the retire barrier: see `lockstep status` on each host"
            )
            self.history.save(abandoned)
            self.reporter.warn(f"deploy {abandoned.id} was interrupted (its orchestrator died); marked so")

    def _release_lock(self) -> None:
        if self.lock is not None:
            try:
                self.lock.release()
            except LockstepError as error:
                self.reporter.warn(f"could not release the environment lock: {error}")
            self.lock = None

    def _save_progress(self, record: OperationRecord, step: str, detail: str) -> None:
        record.steps = self.steps.progress(step, detail)
        record.hosts = [run.summary() for run in self.runs]
        self.history.save(record)

    def _save_final(self, record: OperationRecord) -> None:
        record.steps = [item.to_document() for item in self.steps.records]
        record.hosts = [run.summary() for run in self.runs]
        # The primary alone restores the shared data: its record says whether it did (and left
        # restored: an undone restore says False), as a one-machine record does for `history`.
        primary = self.runs[0].result or self.runs[0].record_asked_again or {}
        record.data_restored = bool(primary.get("data_restored"))
        record.pre_restore_snapshot_id = primary.get("pre_restore_snapshot_id") or record.pre_restore_snapshot_id
        self.history.save(record)

    def _fail(self, record: OperationRecord, error: BaseException) -> LockstepError:
        """Abort every host still deploying, agree on the data step of their unwinds, wait for
        them to unwind, and say what each did."""
        self._recover_from_interrupt()
        for run in self.runs:
            if not self._unwinding(run):  # one that failed on its own knows already
                self._send(run, ABORT)
        try:
            try:
                self._wait(asyncio.wait_for(self._coordinate_restore(record), UNWIND_WAIT_SECONDS))
            except TimeoutError:
                self.reporter.warn("stopped waiting for the primary's data restore; releasing the held traffic")
            finally:
                for run in self.runs:
                    self._end_input(run)
            self._wait(self._wait_for_unwinds())
            self._confirm_undos(record)
        except KeyboardInterrupt:
            self.reporter.warn("stopped waiting for the hosts to unwind; each finishes on its own")
        failed = [run for run in self.runs if run.culprit]
        for run in self.runs:
            if run.outcome != "not started":
                run.outcome = self._outcome_of_exit(run)
        if isinstance(error, KeyboardInterrupt):
            reason = "interrupted (Ctrl-C, SIGTERM or SIGHUP)"
        elif failed:
            reason = "; ".join(f"{run.name}: {run.failure()}" for run in failed)
        else:
            reason = (
                str(error) if isinstance(error, LockstepError) else f"internal error {type(error).__name__}: {error}"
            )
        if self.data_kept is not None:
            reason += f"; {self.data_kept}"
        for run in self.runs:  # a host whose workers, stopped for the data restore, did not start again
            if (stopped := run.workers_left_stopped()) is not None:
                reason += f"; {stopped}"
        reason = self.redactor.redact(reason)
        record.failed_step = getattr(error, "step", None) or self.steps.interrupted_step()
        record.reason = reason
        # A host started only to hold deployed nothing: its failure leaves no part to undo.
        uncertain = [run for run in self.runs if undo_uncertain(run) and not run.hold_only]
        changed = [run for run in self.runs if run.outcome not in ("not started", "refused")]
        # A failed rollback is "failed" as on one machine; a failed deploy that every host undid, "rolled-back".
        record.outcome = "failed" if uncertain or not changed or self.operation != "deploy" else "rolled-back"
        record.finished_at = time.time()
        self._save_final(record)
        result = RedactedRecord(record, self.redactor)
        if uncertain:
            release = switching_to(record)
            unconfirmed = "; ".join(unconfirmed_line(run, self.context.environment, release) for run in uncertain)
            return DeployFailed(
                f"{self.operation} {record.id} failed: {reason}; not every host confirmed its undo: "
                + self.redactor.redact(unconfirmed),
                "run `lockstep status` on those hosts; `lockstep history` here has each host's outcome",
                result=result,
            )
        if not changed:
            return DeployRefused(
                f"{self.operation} {record.id} refused: {reason}; no host was changed",
                "the release that served before still serves on every host",
                result=result,
            )
        confirmed = self.redactor.redact("".join(f"; {line}" for line in confirmed_lines(self.runs)))
        return DeployRolledBack(
            f"{self.operation} {record.id} failed: {reason}; every host undid its part, none switched{confirmed}",
            "see `lockstep history` here and on the hosts",
            result=result,
        )

    def _confirm_undos(self, record: OperationRecord) -> None:
        """Each host whose lockstep died (killed, its connection lost) is asked, once the others
        have undone their part, whether its part is undone: `lockstep status` there runs the
        clean-up of what died (multi_host_undo.py). Until it says so, nobody may say it is."""
        dead = [run for run in self.runs if run.process is not None and (run.lost or run.exit_signal)]
        if not dead:
            return
        self.reporter.info(
            f"running `lockstep status` on {', '.join(run.name for run in dead)}, whose lockstep died: it undoes "
            "the dead part there"
        )

        async def every() -> None:
            environment = self.context.environment
            asked = [confirm_host(run, partial(ask_status, run.target, self.ssh, environment), record) for run in dead]
            await asyncio.gather(*asked)

        not_asked = "not asked to the end (interrupted)"
        try:
            self._wait(every())
        except Exception as error:  # not a reason to leave the failure unsaid: the host is not confirmed
            not_asked = f"could not ask it: {type(error).__name__}: {error}"
        finally:
            for run in dead:
                run.undo = run.undo or UndoCheck(UNCONFIRMED, self.redactor.redact(not_asked))
                said = f"{run.name}: {run.undo.detail}"
                if run.undo.confirmed:
                    self.reporter.info(said)
                else:
                    self.reporter.warn(said)

    def _outcome_of_exit(self, run: HostRun) -> str:
        if run.hold_only:
            held = run.lost is None and run.exit_code == 0
            return "not deployed (held for the data restore)" if held else "not deployed (its hold failed)"
        if run.lost is not None:
            return "lost"
        if run.exit_code == 0:
            return "succeeded"
        if run.exit_code == int(ExitCode.ROLLED_BACK):
            return "rolled back"
        if run.exit_code in _REFUSED:
            return "refused"
        return "failed"

    async def _wait_for_unwinds(self) -> None:
        async def finish(run: HostRun) -> None:
            while run.running:
                kind, _ = await run.events.get()
                if kind == "exit":
                    return

        await asyncio.wait_for(asyncio.gather(*(finish(run) for run in self.runs)), UNWIND_WAIT_SECONDS)

    def _run_to_the_end(
        self, record: OperationRecord, notifier: Notifier, run_hosts: Callable[[], None]
    ) -> OperationRecord:
        """Run the hosts through the retire step; the record of a success, else the failure.
        A failure before the retire "go" aborts every host, which unwinds (_fail); past it every
        host keeps the release, and the end is reported as it is (multi_host_retire.py)."""
        try:
            run_hosts()
            unfinished = self._finish(record, notifier)
        except (Exception, KeyboardInterrupt) as error:
            if not self.retire_go_sent:
                failure = self._fail(record, error)
                notifier.notify(operation_event(self._failure_event(failure), record, failure.message))
                raise failure from None
            unfinished = self._after_retire_go(record, error, notifier)
        if unfinished is not None:
            raise unfinished from None
        return record

    def _retire_step(self) -> None:
        self.steps.run(
            "retire",
            "every host",
            lambda: self._wait(self._retire_every_host()),
            lambda left: "every host succeeded" if not left else f"every host keeps the release; unfinished: {left}",
        )

    async def _retire_every_host(self) -> str:
        """Past this "go" every host keeps the release, even one whose retire step fails
        (multi_host_retire.py): wait for every host to end; the hosts left unfinished."""
        self.retire_go_sent = True
        for run in self.runs:
            self._send(run, GO)
        await asyncio.gather(*(self._until_exit(run) for run in self.runs))
        for run in self.runs:
            self._settle_retire_outcome(run)
        return ", ".join(f"{run.name} ({run.outcome})" for run in self.runs if run.culprit)

    def _finish(self, record: OperationRecord, notifier: Notifier) -> DeployFailed | None:
        """Every host has ended past the retire "go": the record says what each serves; the
        failure to raise when not every host finished (multi_host_retire.py)."""
        self._record_success(record)
        unfinished = self._report_retire(record)
        record.finished_at = time.time()
        self._save_final(record)
        if unfinished is None:
            notifier.notify(operation_event(self.done_event, record, self._done_message(record)))
        else:
            notifier.notify(operation_event(self.failed_event, record, unfinished.message))
        return unfinished

    def _after_retire_go(
        self, record: OperationRecord, error: BaseException, notifier: Notifier
    ) -> DeployFailed | None:
        """This machine failed (Ctrl-C, SIGTERM, a bug) after telling every host to keep the
        release: aborting would reach no host, and undoing would be wrong (multi_host_retire.py).
        Wait for the hosts to end, and report as for any end past the retire "go"."""
        cause = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        self.reporter.warn(
            f"{self.redactor.redact(cause)} after every host was told to keep release "
            f"{record.release_id or record.id}: nothing is undone; waiting for the hosts to finish"
        )
        self._recover_from_interrupt()
        try:
            self._wait(self._wait_for_unwinds())
        except (Exception, KeyboardInterrupt):
            self.reporter.warn("stopped waiting for the hosts; each finishes on its own")
        for run in self.runs:
            if run.outcome != "not started":
                self._settle_retire_outcome(run)
        return self._finish(record, notifier)

    def _settle_retire_outcome(self, run: HostRun) -> None:
        run.outcome = "still running" if run.running else retire_outcome(run, self._outcome_of_exit(run))
        run.culprit = run.outcome != "succeeded"

    def _report_retire(self, record: OperationRecord) -> DeployFailed | None:
        """None when every host finished its retire step; else the record says what each host
        serves (asked anew over SSH for a host that did not confirm), and the failure to raise."""
        unfinished = [run for run in self.runs if run.culprit]
        if not unfinished:
            return None
        # Asked again: what a host that did not confirm serves; whether the agent of one that kept
        # the release runs, to finish its retire.
        statuses = {status["name"]: status for status in host_statuses(self.context)}
        report = RetireReport(record.id, self.context.environment, self.operation, record.release_id)
        for run in unfinished:
            status = statuses.get(run.name)
            report.add(run, status)
            last = (status or {}).get("last_operation") or {}
            if run.result is None and last.get("id") == record.id:
                run.record_asked_again = last
        record.outcome = "succeeded" if report.every_host_serves else "failed"
        record.failed_step = "retire"
        record.reason = self.redactor.redact(report.reason())
        return report.failure(RedactedRecord(record, self.redactor))

    def _close(self) -> None:
        for run in self.runs:
            if run.connection is not None:
                run.connection.close()
        try:
            self.loop.run_until_complete(asyncio.sleep(0))
        finally:
            self.loop.close()


class MultiHostDeployment(HostFanOut):
    """One `lockstep deploy` to every host of an environment, all or none."""

    def __init__(self, context: EnvironmentContext, request: DeployRequest, reporter: Reporter) -> None:
        super().__init__(context, reporter, request.lock_wait, request.force)
        self.request = request

    def _run(self) -> OperationRecord:
        """Deploy to every host; the record of a success, else DeployRolledBack/DeployFailed/DeployRefused."""
        work_tree = self.config.code.path
        if self.config.code.kind != "git" or work_tree is None:
            raise UsageError(
                "lockstep deploy ships git commits, and the code is not a git work tree",
                'set [code] kind = "git" and path to the work tree in lockstep.toml',
            )
        resolved = self.steps.run(
            "preflight",
            ", ".join(run.name for run in self.runs),
            lambda: self._preflight(work_tree),
            lambda r: f"{r.short_commit} on {counted(len(self.runs), 'host')}",
        )
        record = OperationRecord.started_now(
            new_deploy_id(resolved.commit),
            "deploy",
            self.context.environment,
            ref=resolved.ref,
            commit=resolved.commit,
            message=self.request.message or resolved.subject,
            release_id=None,
            hosts=[run.summary() for run in self.runs],
        )
        bind_context(self.reporter, deploy_id=record.id, env=record.environment)
        self._confirm(record)
        self.steps.run("lock", self.context.environment, lambda: self._take_lock(record), lambda _: "held")
        self.steps.on_started = lambda step, detail: self._save_progress(record, step, detail)
        notifier = notifier_for(self.context, self.reporter)

        def run_hosts() -> None:
            self.history.save(record)
            notifier.notify(
                operation_event(DEPLOY_STARTED, record, f"deploying {record.id} to {counted(len(self.runs), 'host')}")
            )
            self._run_hosts(record)

        try:
            return self._run_to_the_end(record, notifier, run_hosts)
        finally:
            self._release_lock()
            notifier.close()

    def _record_success(self, record: OperationRecord) -> None:
        record.release_id = record.id
        # The primary's pre-deploy snapshot: what `rollback --with-data` restores from (choose_target).
        record.snapshot_id = (self.runs[0].result or {}).get("snapshot_id")
        record.outcome = "succeeded"

    def _done_message(self, record: OperationRecord) -> str:
        return f"deployed {record.id} to every host"

    def _failure_event(self, failure: LockstepError) -> str:
        return DEPLOY_ROLLED_BACK if isinstance(failure, DeployRolledBack) else DEPLOY_FAILED

    def _run_hosts(self, record: OperationRecord) -> None:
        primary, others = self.runs[0], self.runs[1:]
        self.steps.run(
            "primary",
            f"{primary.name}: snapshot, migrations, start, smoke",
            lambda: self._wait(self._advance([primary], record, "start", SWITCH_BARRIER)),
            lambda _: "at the switch barrier",
        )
        if others:
            self.steps.run(
                "hosts",
                ", ".join(run.name for run in others),
                lambda: self._wait(self._advance(others, record, "start", SWITCH_BARRIER)),
                lambda _: "every host at the switch barrier",
            )
        self.steps.run(
            "switch",
            "every host",
            lambda: self._wait(self._advance(self.runs, record, GO, RETIRE_BARRIER)),
            lambda _: "every host switched and watched",
        )
        self._retire_step()

    def _remote_arguments(self, run: HostRun, record: OperationRecord) -> list[str]:
        arguments = [
            "deploy",
            record.commit or "",
            "--env",
            self.context.environment,
            "--json",
            "--log-format",
            "json",
            "--yes",
            "--coordinated",
            record.id,
        ]
        if record.message:
            arguments += ["--message", record.message]
        if not run.primary:
            arguments.append("--secondary")
            if self.runs[0].restores_data:  # its unwind restores the data: this host must hold meanwhile
                arguments.append("--hold-on-unwind")
        if self.request.skip_backup:
            arguments.append("--skip-backup")
        if self.request.skip_migrations:
            arguments.append("--skip-migrations")
        return arguments

    def _hold_only_arguments(self, record: OperationRecord) -> list[str] | None:
        arguments = ["deploy", record.commit or "", "--env", self.context.environment, "--json", "--log-format"]
        return [*arguments, "json", "--yes", "--coordinated", record.id, "--hold-only"]

    def _preflight(self, work_tree: Path) -> ResolvedRef:
        resolved = resolve_ref(work_tree, self.request.ref)
        repository = self.context.project.access.open(load_index=False)
        try:
            repository_id = repository.config.id
        finally:
            repository.close()
        with tempfile.TemporaryDirectory(prefix="lockstep-bundle-") as directory:
            bundles = CommitBundles(work_tree, resolved.commit, Path(directory))
            self._wait(self._check_every_host(lambda run: self._check_host(run, resolved, bundles, repository_id)))
        return resolved

    async def _check_host(
        self, run: HostRun, resolved: ResolvedRef, bundles: CommitBundles, repository_id: str
    ) -> None:
        await self._connect_and_check_version(run)
        await self._ship_commit(run, bundles)
        checked = await ssh.run(
            run.connection,
            ssh.shell_command(
                run.target,
                self.ssh,
                [
                    "deploy",
                    resolved.commit,
                    "--env",
                    self.context.environment,
                    "--preflight-only",
                    "--json",
                    "--log-format",
                    "json",
                ],
            ),
        )
        if checked.exit_status != 0:
            raise UsageError(f"host {run.name}: {error_of(checked)}")
        try:
            document = json.loads(checked.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise UsageError(f"host {run.name}: its preflight said {checked.stdout.strip()[-300:]!r}") from None
        if document.get("repository_id") != repository_id:
            raise UsageError(
                f"host {run.name} uses a different repository ({str(document.get('repository_id'))[:8]}) than this "
                f"machine ({repository_id[:8]})",
                "the environment lock and the pre-deploy snapshot live there: point every host's [repository] at "
                "the same S3 bucket or shared path",
            )
        check_same_project(run.name, document.get("project"), self.context.project.name)

    async def _ship_commit(self, run: HostRun, bundles: CommitBundles) -> None:
        """Give the host the commit unless it has it: a bundle over SFTP, fetched into its checkout.
        Only what is new since a commit the host has, when it has one this machine knows; the
        whole history otherwise, and when that fails for any reason (the old way, which always worked)."""
        commit, short = bundles.commit, bundles.commit[:SHORT_COMMIT_LENGTH]
        git = f"git -C {shlex.quote(run.target.project_dir)}"
        has = await ssh.run(run.connection, f"{git} cat-file -e {shlex.quote(commit + '^{commit}')}", timeout=60)
        if has.exit_status == 0:
            self.reporter.info(f"host {run.name}: has commit {short} already, nothing sent")
            return
        incoming = f"{run.target.project_dir.rstrip('/')}/.lockstep/incoming"
        made = await ssh.run(run.connection, f"mkdir -p {shlex.quote(incoming)}", timeout=60)
        if made.exit_status != 0:
            raise UsageError(f"host {run.name}: cannot create {incoming}: {error_of(made)}")
        remote_bundle = f"{incoming}/{commit[:12]}-{os.getpid()}.bundle"
        not_new_only = ""
        try:
            bundle = await bundles.since(await self._host_commits(run, git))
            if bundle is not None:
                fetched = await self._send_bundle(run, git, bundle, remote_bundle)
                if fetched.exit_status == 0:
                    self.reporter.info(
                        f"host {run.name}: sent commit {short} ({byte_size(bundle.size)}, only what is new since "
                        f"{bundle.since()})"
                    )
                    return
                not_new_only = f"; only what is new since {bundle.since()} did not fetch: {git_error(fetched)}"
        except LockstepError as error:
            not_new_only = f"; sending only what is new failed: {error.message}"
        bundle = await bundles.whole_history()
        fetched = await self._send_bundle(run, git, bundle, remote_bundle)
        if fetched.exit_status != 0:
            raise UsageError(
                f"host {run.name}: could not fetch the commit into {run.target.project_dir}: {error_of(fetched)}",
                "project_dir must be a git checkout of the project",
            )
        self.reporter.info(
            f"host {run.name}: sent commit {short} (the whole history, {byte_size(bundle.size)}{not_new_only})"
        )

    async def _host_commits(self, run: HostRun, git: str) -> list[str]:
        """The commits the host's earlier deploys fetched (DEPLOYED_REF) and its checkout's HEAD, those it has."""
        refs = [shlex.quote(f"{ref}^{{commit}}") for ref in (DEPLOYED_REF, "HEAD")]
        asked = await ssh.run(
            run.connection, "; ".join(f"{git} rev-parse --verify -q {ref}" for ref in refs) + "; exit 0", timeout=60
        )
        return object_names(asked.stdout)

    async def _send_bundle(self, run: HostRun, git: str, bundle: Bundle, remote_bundle: str) -> ssh.RemoteResult:
        """Upload the bundle and fetch its commit into the host's DEPLOYED_REF; the fetch's result."""
        await ssh.upload(run.connection, bundle.path, remote_bundle)
        quoted = shlex.quote(remote_bundle)
        return await ssh.run(
            run.connection,
            f"{git} fetch -q {quoted} +{INCOMING_REF}:{DEPLOYED_REF}; status=$?; rm -f {quoted}; exit $status",
        )

    def _confirm(self, record: OperationRecord) -> None:
        """Asked once here, for every host: the hosts run with --yes."""
        question = (
            f"Deploy {(record.commit or '')[:12]} to {self.context.environment} ({counted(len(self.runs), 'host')})?"
        )
        apply_deploy_policy(self.context, self.policy, self.request, record, self.reporter, question)


def error_of(result: ssh.RemoteResult) -> str:
    """The error a remote lockstep printed (its --json error, else its last stderr line)."""
    for line in reversed(result.stdout.strip().splitlines()):
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("error"):
            hint = document.get("hint")
            return str(document["error"]) + (f": {hint}" if hint else "")
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            return line[-500:]
        if isinstance(event, dict) and event.get("event") == "step-failed":
            return str(event.get("reason"))[-500:]
    if result.exit_signal is not None:
        return f"its lockstep process {ssh.ended_by(result.exit_signal)}"
    return f"exit status {result.exit_status}"


def git_error(result: ssh.RemoteResult) -> str:
    """A failed git command's complaint in one line (git spreads it over several: the last alone
    may be just a commit name)."""
    said = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
    return said[-300:] or f"exit status {result.exit_status}"


def host_statuses(context: EnvironmentContext) -> list[dict[str, Any]]:
    """`lockstep status --json` of every host, in config order: its document, or why not."""
    targets = context.config.host_targets()

    async def every() -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(*(ask_status(target, context.config.ssh, context.environment) for target in targets))
        )

    return asyncio.run(every())


async def ask_status(target: HostTarget, ssh_config: SshConfig, environment: str) -> dict[str, Any]:
    """`lockstep status --json --local` on the host, over a connection of its own: its document,
    or why not (`reachable`, `error`). It cleans up what died there (clean_up_abandoned)."""
    try:
        connection = await ssh.connect(target, ssh_config)
    except LockstepError as error:
        return {"name": target.name, "reachable": False, "error": error.message}
    try:
        arguments = ["status", "--env", environment, "--json", "--local"]
        command = ssh.shell_command(target, ssh_config, arguments)
        result = await ssh.run(connection, command, timeout=120)
    except LockstepError as error:
        return {"name": target.name, "reachable": False, "error": error.message}
    finally:
        connection.close()
    try:
        document = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        document = None
    if result.exit_status != 0 or not isinstance(document, dict):
        return {"name": target.name, "reachable": True, "error": error_of(result)}
    return {"name": target.name, "reachable": True, **document}


def check_same_project(host: str, theirs: Any, ours: str) -> None:
    """Refuse (exit 2) a host whose project name differs from this machine's: the environment's
    lock and the snapshots are found by it, so the host would find the orchestrator's lock free
    and the primary's pre-deploy snapshot would be another project's to this machine."""
    if theirs == ours:
        return
    raise UsageError(
        f"host {host} uses project name {theirs!r}, this machine {ours!r}: the environment lock and the snapshots "
        "are kept per project, so they would not match",
        f'set the same `project = "{ours}"` at the top of lockstep.toml on every host and here '
        "(by default it is the name of the directory lockstep.toml is in)",
    )


def plan_lines(context: EnvironmentContext, request: DeployRequest) -> list[str]:
    """`deploy --dry-run` for a multi-host environment: the hosts and the steps, nothing contacted."""
    targets = context.config.host_targets()
    listed = ", ".join(f"{target.name} ({target.project_dir})" for target in targets)
    primary = targets[0].name
    return [
        f"deploy {request.ref} to {context.environment} on {counted(len(targets), 'host')} over SSH, all or none: "
        f"{listed}",
        "1. preflight: resolve the ref here; reach every host (host keys checked against "
        f"{ssh.known_hosts_path(context.config.ssh)}); same lockstep version; send the commit (git bundle, only "
        "what is new since a commit the host has); each host's own preflight, the same repository and project name",
        f"2. lock environment {context.environment} in the repository, once for every host",
        f"3. primary {primary}: release, pre-deploy snapshot, migrations, start, smoke, up to its switch barrier",
        "4. the other hosts in parallel: release, start, smoke (no snapshot, no migrations), up to their switch "
        "barrier",
        "5. switch: every host at its switch barrier -> go: each switches and watches, up to its retire barrier",
        "6. retire: every host at its retire barrier -> go: each retires its old slot; from this go on every host "
        "keeps the new release (a host failing then is reported, not undone)",
        "on failure on any host before that, or a lost connection: every other host is told to abort and unwinds "
        "(traffic back, new slot stopped)",
        _unwind_data_line(request),
    ]


def _unwind_data_line(request: DeployRequest) -> str:
    """What the plan says of the unwind's data step: the traffic holds and the workers stop on every host."""
    if request.skip_migrations or request.skip_backup:
        skipped = "--skip-migrations" if request.skip_migrations else "--skip-backup"
        return f"data on unwind: no restore ({skipped}), so no host holds its traffic or stops its workers"
    return (
        'data on unwind: if the primary\'s migrations changed the data and its data_rollback is "auto", EVERY HOST '
        "HOLDS ITS TRAFFIC (new requests wait, in-flight ones finish, up to its [traffic] hold_timeout) AND STOPS "
        "THE OLD RELEASE'S WORKERS (components without ports) while the primary restores the data from its "
        "pre-deploy snapshot, then releases the traffic to the old release and starts those workers again (a host "
        "not started yet, when the primary fails first, is started only to hold); a host "
        "that cannot hold or stop its workers stops the restore: THE DATA WAS NOT RESTORED, the primary keeps the "
        "migrated data and names the snapshot to restore by hand"
    )
