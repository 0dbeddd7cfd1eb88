"""Hold traffic while a data restore runs, so no request meets a release on the wrong data.

Without a hold, the newer release keeps serving while its databases are replaced with older data
(errors, and writes that land in a database about to be replaced), until traffic moves to the
older release. With one, the traffic switch keeps new requests waiting (the built-in proxy
itself; nginx and HAProxy through a holding relay, traffic/holding.py), lets in-flight ones
finish, and releases them to whichever release serves once the restore and the switch are done.
A switch that can only refuse ("refuse" mode) answers 503 with Retry-After meanwhile.

The hold names this process as its owner: if the process dies mid-restore, the proxy (or the
agent, for nginx and HAProxy) ends the hold, so the site is never left paused.
"""

from __future__ import annotations

import time
from typing import Any

from lockstep.agent.client import AgentClient
from lockstep.config.deploy_model import TrafficConfig
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.steps import Reporter
from lockstep.traffic.hold import HoldOwner


class TrafficHold:
    """One hold for one operation: `hold` is idempotent, `release` too, and it records how long."""

    def __init__(self, agent: AgentClient, traffic: TrafficConfig, reporter: Reporter, record: OperationRecord) -> None:
        self.agent = agent
        self.traffic = traffic
        self.reporter = reporter
        self.record = record
        self.held = False
        self._started: float | None = None

    def hold(self) -> str:
        """Hold new requests and wait for the in-flight ones; a sentence saying what happened."""
        if self.held:
            return "already held"
        self.held = True  # before the call: a hold the agent set but did not confirm still gets released
        result: dict[str, Any] = self.agent.hold(
            HoldOwner.this_process(), self.traffic.hold_timeout, self.traffic.drain_timeout
        )
        if not result.get("held"):
            self.held = False
            reason = str(result.get("reason", "no slot has the traffic"))
            self.reporter.warn(f"traffic is not held during the data restore: {reason}")
            return f"not held: {reason}"
        self._started = time.monotonic()
        if result.get("mode") == "refuse":
            detail = (
                f"{self.traffic.kind} cannot keep requests waiting: until the release, new requests get "
                "503 with Retry-After"
            )
            self.reporter.warn(detail)
        else:
            detail = f"new requests wait (at most {self.traffic.hold_timeout:g} s, then 503 with Retry-After)"
        if not result.get("drained", True):
            detail += f"; requests still in flight after {self.traffic.drain_timeout:g} s"
        return detail

    def release(self) -> str:
        """End the hold; records the seconds traffic was held on the operation."""
        if not self.held:
            return "nothing was held"
        result: dict[str, Any] = self.agent.release()
        self.held = False
        summary = result.get("hold") or {}
        measured = time.monotonic() - self._started if self._started is not None else 0.0
        seconds = float(summary.get("seconds") or measured)  # None when the switch could not measure it
        self.record.traffic_held_seconds = round(seconds, 3)
        if not result.get("released"):
            return f"the hold had already ended (after at most {measured:.1f} s)"
        waited = int(summary.get("held", 0)) + int(summary.get("waiting", 0))
        refused = int(summary.get("refused", 0))
        text = f"traffic held {seconds:.1f} s"
        if summary.get("mode") != "refuse" and "held" in summary:
            text += f": {waited} requests waited"
        if refused:
            text += f", {refused} got 503 with Retry-After"
        return text

    def release_quietly(self) -> None:
        """The unwind's undo action: release, and say so."""
        if self.held:
            self.reporter.info(self.release())
