"""The agent's watch on the recovery point objective: is the newest good snapshot recent enough?

Every `interval` seconds (in the background, so the agent loop never waits on the repository)
it finds the newest lockstep snapshot whose last verification did not fail and that holds every
configured database, and when that is older than `agent.rpo_hours` it sends one
`snapshot.rpo_exceeded` event, then again at most once per RPO period while the condition lasts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from lockstep.actions.environment import EnvironmentContext, snapshot_environments
from lockstep.notify.dispatcher import Notifier
from lockstep.notify.events import SNAPSHOT_RPO_EXCEEDED, Event
from lockstep.pipeline.retention_policy import snapshot_environment
from lockstep.pipeline.snapshot import is_of_project, is_schema_only, load_manifest
from lockstep.pipeline.verification_records import latest_results

CHECK_INTERVAL_SECONDS = 600.0

# Age of the newest good snapshot in hours, None when there is none at all.
AgeProbe = Callable[[], float | None]


def newest_good_snapshot_age(context: EnvironmentContext) -> float | None:
    """Hours since the newest snapshot of this environment that did not fail its last verification
    and holds every configured database (a pre-restore snapshot of one database is no backup of
    the others, so manifests are read, newest first, until one does).

    Another environment's or another project's snapshots sharing the repository say nothing
    about this one's data."""
    names = snapshot_environments(context)
    configured = set(context.config.databases)
    with context.project.access.session(lock=False, load_index=False) as repository:
        snapshots = [
            snapshot
            for snapshot in repository.list_snapshots(skip_unreadable=True)
            if is_of_project(snapshot, context.project.name)
            and snapshot_environment(snapshot) in names
            and not is_schema_only(snapshot)  # no backup of the data
        ]
        results = latest_results(repository, [snapshot.id for snapshot in snapshots])
        good = [snapshot for snapshot in snapshots if snapshot.id not in results or results[snapshot.id].ok]
        if good and configured:
            repository.load_index()  # only to read manifests
        for snapshot in sorted(good, key=lambda item: item.time_ns, reverse=True):
            if not configured or configured <= set(load_manifest(repository, snapshot).databases):
                return (time.time() * 1e9 - snapshot.time_ns) / 3.6e12
    return None


class RpoWatch:
    """Call `tick()` from the agent loop; it checks at most every `interval` seconds."""

    def __init__(
        self,
        context: EnvironmentContext,
        notifier: Notifier,
        probe: AgeProbe | None = None,
        interval: float = CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.context = context
        self.notifier = notifier
        self.probe = probe or (lambda: newest_good_snapshot_age(context))
        self.interval = interval
        self.clock = clock
        self.warn = warn
        self.rpo_hours = context.config.agent.rpo_hours
        self._next_check = clock()  # the first tick checks
        self._last_alert: float | None = None
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        if self.clock() < self._next_check or (self._thread is not None and self._thread.is_alive()):
            return
        self._next_check = self.clock() + self.interval
        self._thread = threading.Thread(target=self.check, name="rpo-watch", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Look once; True when an alert was sent."""
        try:
            age = self.probe()
        except Exception as error:  # an unreachable repository is doctor's business; keep watching
            self.warn(f"could not check the age of the newest snapshot: {error}")
            return False
        if age is not None and age <= self.rpo_hours:
            self._last_alert = None
            return False
        moment = self.clock()
        if self._last_alert is not None and moment - self._last_alert < self.rpo_hours * 3600:
            return False
        self._last_alert = moment
        summary = (
            "no good snapshot exists yet"
            if age is None
            else f"the newest good snapshot is {age:.1f} h old, more than agent.rpo_hours = {self.rpo_hours:g}"
        )
        self.notifier.notify(
            Event(
                kind=SNAPSHOT_RPO_EXCEEDED,
                environment=self.context.environment,
                summary=summary,
                details={"age_hours": age, "rpo_hours": self.rpo_hours},
                at=datetime.now(UTC),
            )
        )
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
