"""The agent's watch for deploys and rollbacks that died (kill -9, a lost machine session).

A killed deploy leaves its history record "running" and may leave a half-started release (and
its worker) beside the serving one. The CLI cleans that up on the next `status`, deploy or
rollback; until someone runs one, the dashboard and /metrics showed the dead deploy as running.
So the agent looks every few seconds, in the background, and cleans up the same way. It also
finishes the retire a multi-host deploy or rollback left unfinished here past its retire "go"
(pipeline/unfinished_retire.py): the slot it left must not go on running its workers. And it
starts again the workers a data restore stopped and nobody could start again
(pipeline/paused_workers_retry.py), backing off when they fail to start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lockstep.actions.environment import EnvironmentContext
from lockstep.actions.step_reports import SilentReporter
from lockstep.agent.service import AgentService
from lockstep.errors import LockstepError
from lockstep.fault_injection import wait_point
from lockstep.pipeline.deploy import clean_up_abandoned
from lockstep.pipeline.history import History
from lockstep.pipeline.paused_workers_retry import retry_paused_workers
from lockstep.pipeline.unfinished_retire import finish_unfinished_retires

CHECK_INTERVAL_SECONDS = 5.0
OPERATIONS = ("deploy", "rollback")  # scheduled jobs are the scheduler's: they run in the agent


class _LogReporter(SilentReporter):
    """Says what the clean-up does on the agent's log, one line each (no step progress)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def info(self, message: str) -> None:
        self.log(message)

    def warn(self, message: str) -> None:
        self.log(message)


class AbandonedWatch:
    """Call `tick()` from the agent loop; a check runs at most every `interval` seconds, in a thread
    (stopping a slot waits for its processes, and supervision must not)."""

    def __init__(
        self,
        context: EnvironmentContext,
        service: AgentService,
        log: Callable[[str], None] = lambda line: None,
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self.context = context
        self.service = service
        self.history = History(context.layout.history_database)
        self.reporter = _LogReporter(log)
        self.interval = interval
        self._next = 0.0
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = now + self.interval
        self._thread = threading.Thread(target=self.check, name="abandoned-watch", daemon=True)
        self._thread.start()

    def check(self) -> int:
        """Clean up every dead deploy or rollback of this host, finish the retires left
        unfinished and start the workers left stopped; returns how many records it changed."""
        wait_point("abandoned watch")  # tests: the clean-up left to whoever else runs it (a `lockstep status`)
        cleaned = 0
        try:
            for record in self.history.abandoned():
                if record.operation in OPERATIONS:
                    clean_up_abandoned(self.context, record, self.service, self.history, self.reporter)
                    cleaned += 1
            cleaned += finish_unfinished_retires(self.context, self.service, self.history, self.reporter)
            cleaned += retry_paused_workers(self.context, self.service, self.history, self.reporter)
        except (LockstepError, OSError) as error:  # a busy history database: next time
            self.reporter.warn(f"could not check for interrupted deploys: {error}")
        return cleaned

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
