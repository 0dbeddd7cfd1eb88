"""Steps with undo: a deploy is a list of steps, and every step that changed something leaves the
action that takes the change back. On a failure, Ctrl-C, SIGTERM or SIGHUP the undo actions run in
reverse, so the environment ends where it started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from lockstep.errors import LockstepError
from lockstep.exit_codes import ExitCode

T = TypeVar("T")


class Reporter(Protocol):
    """Where a deploy says what it does; the CLI prints it, tests collect it."""

    def step_started(self, step: str, detail: str) -> None: ...

    def step_finished(self, step: str, seconds: float, detail: str) -> None: ...

    def step_failed(self, step: str, seconds: float, reason: str) -> None: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        """Ask the user; False when nobody can answer (no TTY)."""
        ...


class SilentReporter:
    """A reporter that says nothing and answers no: for dry runs, whose plan says it all."""

    def step_started(self, step: str, detail: str) -> None: ...

    def step_finished(self, step: str, seconds: float, detail: str) -> None: ...

    def step_failed(self, step: str, seconds: float, reason: str) -> None: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def confirm(self, question: str, expected_answer: str | None = None) -> bool:
        return False


def bind_context(reporter: Reporter, **fields: object) -> None:
    """Give a reporter that supports it fields for every later event (deploy_id, env)."""
    bind = getattr(reporter, "bind", None)
    if callable(bind):
        bind(**fields)


@dataclass
class StepRecord:
    name: str
    outcome: str  # "ok" | "failed" | "undone" | "undo-failed" | "skipped"
    seconds: float
    detail: str = ""

    def to_document(self) -> dict[str, Any]:
        return {"step": self.name, "outcome": self.outcome, "seconds": round(self.seconds, 3), "detail": self.detail}


class StepFailed(LockstepError):
    """A step failed; `step` names it, the message says why, the exit code is the cause's."""

    def __init__(self, step: str, reason: str, exit_code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class StepRunner:
    """Runs steps in order, remembers their undo actions, and unwinds them on request."""

    reporter: Reporter
    records: list[StepRecord] = field(default_factory=list)
    # Called with (step, detail) as each step starts: a deploy writes its history record then,
    # so one killed with SIGKILL (no unwinding, no last words) still says where it died.
    on_started: Callable[[str, str], None] | None = None
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    _running: list[tuple[str, str]] = field(default_factory=list)  # (step, detail), innermost last

    def progress(self, running: str, detail: str = "") -> list[dict[str, Any]]:
        """The steps so far and the one now `running`, as the history stores them."""
        running_step = {"step": running, "outcome": "running", "seconds": 0.0, "detail": detail}
        return [record.to_document() for record in self.records] + [running_step]

    def interrupted_step(self) -> str | None:
        """The step Ctrl-C, SIGTERM or SIGHUP stopped, if one was running."""
        last = self.records[-1] if self.records else None
        return last.name if last is not None and last.outcome == "failed" and last.detail == "interrupted" else None

    def run(self, name: str, detail: str, action: Callable[[], T], describe: Callable[[T], str] | None = None) -> T:
        """Run one step; its failure becomes StepFailed(name, reason)."""
        self._running.append((name, detail))
        try:
            result = self._run(name, detail, action, describe)
        finally:
            self._running.pop()
        if self._running and self.on_started is not None:
            # A step run inside another ended: the outer one runs on, and a record killed now
            # must say so, not that the inner one still runs (its progress named the inner one).
            self.on_started(*self._running[-1])
        return result

    def _run(self, name: str, detail: str, action: Callable[[], T], describe: Callable[[T], str] | None) -> T:
        self.reporter.step_started(name, detail)
        started = time.monotonic()
        try:
            if self.on_started is not None:
                self.on_started(name, detail)
            result = action()
        except StepFailed:
            raise
        except KeyboardInterrupt:
            seconds = time.monotonic() - started
            self.records.append(StepRecord(name, "failed", seconds, "interrupted"))
            self.reporter.step_failed(name, seconds, "interrupted")
            raise
        except Exception as error:
            seconds = time.monotonic() - started
            reason = str(error)
            self.records.append(StepRecord(name, "failed", seconds, reason))
            self.reporter.step_failed(name, seconds, reason)
            exit_code = error.exit_code if isinstance(error, LockstepError) else ExitCode.FAILED
            raise StepFailed(name, reason, exit_code) from error
        seconds = time.monotonic() - started
        summary = describe(result) if describe is not None else ""
        self.records.append(StepRecord(name, "ok", seconds, summary))
        self.reporter.step_finished(name, seconds, summary)
        return result

    def undo_failed(self) -> list[str]:
        """The undo actions that failed so far (e.g. the switch back, with the agent gone)."""
        return [record.name.removeprefix("undo ") for record in self.records if record.outcome == "undo-failed"]

    def on_undo(self, name: str, action: Callable[[], None]) -> None:
        """Register how to take back what the step `name` changed."""
        self._undo.append((name, action))

    def forget_undo(self, name: str) -> None:
        """A later step made an undo unnecessary (e.g. the old slot was retired on purpose)."""
        self._undo = [(step, action) for step, action in self._undo if step != name]

    def settle(self) -> None:
        """The operation is done and past undoing: forget every undo, so a late interruption (a
        SIGTERM during a post- hook) cannot take a finished deploy apart."""
        self._undo = []

    def unwind(self) -> bool:
        """Run every undo action, newest first, even when one fails; True when all succeeded."""
        all_ok = True
        while self._undo:
            name, action = self._undo.pop()
            self.reporter.step_started(f"undo {name}", "")
            started = time.monotonic()
            try:
                action()
            except BaseException as error:  # keep unwinding: the rest still matters
                all_ok = False
                seconds = time.monotonic() - started
                self.records.append(StepRecord(f"undo {name}", "undo-failed", seconds, str(error)))
                self.reporter.step_failed(f"undo {name}", seconds, str(error))
                if isinstance(error, KeyboardInterrupt):
                    self.reporter.warn("interrupted again: still undoing, the remaining steps matter")
                continue
            seconds = time.monotonic() - started
            self.records.append(StepRecord(f"undo {name}", "undone", seconds))
            self.reporter.step_finished(f"undo {name}", seconds, "")
        return all_ok
