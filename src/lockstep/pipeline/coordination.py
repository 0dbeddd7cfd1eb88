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
before each step that changes something.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from lockstep.errors import LockstepError, UsageError
from lockstep.pipeline.environment_lock import EnvironmentLock, EnvironmentLockLost, describe_holder

BARRIER_KEY = "lockstep_barrier"
GO = "go"
ABORT = "abort"
SWITCH_BARRIER = "switch"
RETIRE_BARRIER = "retire"


class OrchestratorSaidAbort(UsageError):
    """The orchestrator (or its silence) told this host to undo its deploy."""


def barrier_line(name: str, deploy_id: str) -> str:
    return json.dumps({BARRIER_KEY: name, "deploy_id": deploy_id})


def parse_barrier(line: str) -> str | None:
    """The barrier a host's stdout line announces, or None for any other line."""
    if BARRIER_KEY not in line:
        return None
    try:
        document = json.loads(line)
    except ValueError:
        return None
    name = document.get(BARRIER_KEY) if isinstance(document, dict) else None
    return str(name) if name else None


def wait_at_barrier(name: str, deploy_id: str, output: TextIO | None = None, answers: TextIO | None = None) -> None:
    """Announce the barrier and wait for the orchestrator's word; anything but "go" raises."""
    output = sys.stdout if output is None else output
    answers = sys.stdin if answers is None else answers
    try:
        output.write(barrier_line(name, deploy_id) + "\n")
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
            "a coordinated deploy runs only under its orchestrator's lock; is this host using the same repository?",
        )
