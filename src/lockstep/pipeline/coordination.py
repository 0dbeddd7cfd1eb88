"""The host's half of a multi-host deploy: barriers on stdin/stdout, and the orchestrator's lock.

A coordinated `lockstep deploy` (run by the orchestrator over SSH, pipeline/multi_host.py) stops
twice: before its switch and before its retire step. There it prints one line on stdout,
`{"lockstep_barrier": "switch", "deploy_id": ...}`, and reads one line from stdin. "go" goes on;
anything else ("abort"), end of input or a read error (the SSH connection dropped) fails the
step, so the deploy unwinds exactly as on any failure: traffic back, new slot stopped, data per
policy. That is what keeps hosts from staying switched when another host failed, or when the
orchestrator died: nobody passes a barrier without a "go" that only comes when every host is there.

It does not take the environment lock: the orchestrator holds it for the whole deploy, and the
host checks the lock in the (shared) repository is the orchestrator's, before it starts and
before each step that changes something. The lock is the project's (pipeline/environment_lock.py),
so the orchestrator's preflight makes sure every host has its project name.

A data restore is the one step of an unwind the hosts must do together: the primary restores the
shared databases, and no host may write to them meanwhile (the old releases would write into a
database about to be replaced, or read one half restored): not its web processes, nor its
workers, which take no requests and so go on under a traffic hold. So when the primary's unwind
would restore the data (it says so at its switch barrier, `"restores_data": true`), the
orchestrator starts the other hosts with --hold-on-unwind, and an unwind runs two more barriers:

 - "held", on each other host: it holds its traffic (requests wait, traffic/holding.py), undoes
   its part, stops the old release's workers (pipeline/worker_pause.py), then announces
   `{"lockstep_barrier": "held", "held": true|false, "reason": ..., "workers_stopped":
   true|false, "workers_reason": ...}` and keeps holding until the orchestrator's "go" (the
   primary's restore is over), when it starts those workers again. Any other answer, or end of
   input, ends the hold (and starts the workers) too, with a warning: nobody is left to say when
   the restore is over, and a hold cannot outlive its owner anyway.
 - "restore", on the primary: holding its own traffic, its own workers stopped, it waits before
   restoring. "go" (every host holds and stopped its workers) restores; anything else ("keep": a
   host could not hold, or its workers may still run; end of input: the orchestrator is gone)
   keeps the migrated data, loudly, with the snapshot to restore by hand.

A host never started (the primary failed before its switch barrier) runs only the held barrier:
the orchestrator starts it then with `deploy --hold-only` (Deployment.hold_only).

Both lines say `"unwinding": true`, which is how the orchestrator tells them from a barrier of
the way forward. A host that failed on its own may get the orchestrator's "abort" while it waits there: the
deploy's end, which it knows already, so it reads on (see wait_for_word).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from lockstep.errors import LockstepError, UsageError
from lockstep.pipeline.environment_lock import (
    EnvironmentLock,
    EnvironmentLockLost,
    describe_holder,
    judge_staleness,
    read_holder,
)

if TYPE_CHECKING:
    from lockstep.actions.environment import EnvironmentContext

BARRIER_KEY = "lockstep_barrier"
GO = "go"
ABORT = "abort"
SWITCH_BARRIER = "switch"
RETIRE_BARRIER = "retire"
# The unwind's data step (above): the primary before its restore, the others holding their traffic.
RESTORE_BARRIER = "restore"
HELD_BARRIER = "held"
KEEP = "keep"  # the primary's answer at the restore barrier when some host does not hold


class OrchestratorSaidAbort(UsageError):
    """The orchestrator (or its silence) told this host to undo its deploy."""


def barrier_line(name: str, deploy_id: str, said: dict[str, Any] | None = None) -> str:
    return json.dumps({BARRIER_KEY: name, "deploy_id": deploy_id, **(said or {})})


def parse_barrier_document(line: str) -> dict[str, Any] | None:
    """The barrier line's document (its name under BARRIER_KEY, and what the host said with
    it), or None for any other line."""
    if BARRIER_KEY not in line:
        return None
    try:
        document = json.loads(line)
    except ValueError:
        return None
    if not isinstance(document, dict) or not document.get(BARRIER_KEY):
        return None
    return document


def parse_barrier(line: str) -> str | None:
    """The barrier a host's stdout line announces, or None for any other line."""
    document = parse_barrier_document(line)
    return None if document is None else str(document[BARRIER_KEY])


def announce(name: str, deploy_id: str, said: dict[str, Any] | None = None, output: TextIO | None = None) -> str | None:
    """Print the barrier line; None, or why it could not be printed (the connection is gone)."""
    output = sys.stdout if output is None else output
    try:
        output.write(barrier_line(name, deploy_id, said) + "\n")
        output.flush()
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__
    return None


def read_word(answers: TextIO | None = None, skip_abort: bool = False) -> str | None:
    """The orchestrator's next word, None at end of input or on a read error. `skip_abort`: in
    an unwind's data step, where "abort" is the deploy's end the host knows already (it failed
    on its own, and the orchestrator's abort crossed its barrier line), so it is read past."""
    answers = sys.stdin if answers is None else answers
    while True:
        try:
            answer = answers.readline()
        except (OSError, ValueError):
            return None
        if not answer:
            return None
        word = answer.strip()
        if not (skip_abort and word == ABORT):
            return word


def wait_for_word(
    name: str,
    deploy_id: str,
    said: dict[str, Any] | None = None,
    output: TextIO | None = None,
    answers: TextIO | None = None,
) -> str | None:
    """Announce an unwind's barrier (held, restore) and return the orchestrator's word, None
    when it is gone. Never raises: the caller is unwinding, and decides what silence means."""
    if announce(name, deploy_id, said, output) is not None:
        return None
    return read_word(answers, skip_abort=True)


def wait_at_barrier(
    name: str,
    deploy_id: str,
    output: TextIO | None = None,
    answers: TextIO | None = None,
    said: dict[str, Any] | None = None,
) -> None:
    """Announce the barrier (with what the host `said`) and wait for the orchestrator's word;
    anything but "go" raises."""
    output = sys.stdout if output is None else output
    answers = sys.stdin if answers is None else answers
    try:
        output.write(barrier_line(name, deploy_id, said) + "\n")
        output.flush()
        answer = answers.readline()
    except (OSError, ValueError) as error:  # the connection is gone: nobody will say go
        raise OrchestratorSaidAbort(f"lost the orchestrator at the {name} barrier ({error})") from None
    word = answer.strip()
    if word == GO:
        return
    if not answer:
        raise OrchestratorSaidAbort(
            f"lost the orchestrator at the {name} barrier (its connection closed): undoing, as another host "
            "may not switch"
        )
    raise OrchestratorSaidAbort(f"the orchestrator said {word or 'nothing'} at the {name} barrier: another host failed")


def check_joined_lock(lock: EnvironmentLock, deploy_id: str) -> None:
    """The environment's lock is held by the orchestrator's deploy `deploy_id`, or raise."""
    try:
        holder = lock.current()
    except LockstepError as error:
        raise EnvironmentLockLost(f"could not read the lock of environment {lock.environment}: {error}") from None
    if holder is None or holder.deploy_id != deploy_id:
        held = f"it is held by {describe_holder(holder)}" if holder is not None else "it is free"
        raise EnvironmentLockLost(
            f"the lock of environment {lock.environment} is not the coordinating deploy {deploy_id}'s: {held}",
            "a coordinated deploy runs only under its orchestrator's lock; is this host using the same repository "
            f"and the same project name (here {lock.project!r}: `project` in lockstep.toml)?",
        )


def orchestrator_still_holds(context: EnvironmentContext, deploy_id: str) -> str | None:
    """Whether the coordinated deploy `deploy_id` goes on without this host: its orchestrator
    still holds the environment's lock (a host never takes it, it joins it), so another host may
    be restoring the shared data. Its holder's description, or why the lock could not be read
    (then it may go on too); None once the lock is gone, another's, or stale (the orchestrator
    died: nobody restores any more)."""
    from lockstep.repository.documents import DocumentStore

    try:
        store = DocumentStore(context.project.access.open(load_index=False))
        holder = read_holder(store, context.project.name, context.environment)
    except LockstepError as error:
        return f"its lock could not be read: {error}"
    if holder is None or holder.deploy_id != deploy_id:
        return None
    stale, _ = judge_staleness(holder, context.config.deploy.lock_stale_after)
    return None if stale else f"its lock is held by {describe_holder(holder)}"
