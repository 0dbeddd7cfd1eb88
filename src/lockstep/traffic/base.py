"""The one interface every traffic switch implements, so deploys do not care which proxy runs.

A switch listens on one public address and forwards every request to one upstream port, the
active slot's. `switch_to` is atomic: requests that started before it finish on the old upstream,
requests that start after it go to the new one, and none fails in between.

`hold` and `release` pause traffic around a data rollback (as `kamal-proxy pause`/`resume` do):
while held, no new request reaches any release, and on release the requests go to the upstream
active at that moment. What a switch can honestly do while held differs (see HoldMode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lockstep.errors import LockstepError
from lockstep.traffic.hold import HoldOwner

# "queue": new requests wait and are answered once the hold ends (503 + Retry-After only past
# the deadline). "refuse": the switch cannot keep a request waiting, so every new request gets
# 503 with Retry-After while the hold lasts; still better than the wrong release on the wrong data.
HoldMode = Literal["queue", "refuse"]


class HoldUnsupported(LockstepError):
    """This switch cannot hold traffic; a data rollback goes on without a hold, and says so."""


@dataclass(frozen=True)
class UpstreamCounters:
    """What the switch has seen of one upstream since it started; deploys watch the error rate."""

    port: int
    requests: int = 0
    errors: int = 0  # responses the switch had to make itself (502/504) plus upstream 5xx
    in_flight: int = 0


@dataclass(frozen=True)
class TrafficState:
    """A switch's view of itself: where it listens and where traffic goes now."""

    running: bool
    listen: str  # "HOST:PORT"
    active_port: int | None
    upstreams: tuple[UpstreamCounters, ...] = field(default_factory=tuple)
    hold: dict[str, Any] | None = None  # the hold in force: owner, seconds, waiting, deadline passed


class TrafficSwitch(Protocol):
    """Implemented by traffic/builtin.py, traffic/nginx.py and traffic/haproxy.py."""

    def ensure_running(self, initial_port: int) -> None:
        """Start the proxy if it is not running (adopting one that already runs), sending traffic
        to `initial_port` when it has to start. Idempotent: a running proxy keeps its upstream."""

    def switch_to(self, port: int) -> None:
        """Send every new request to `port`, atomically; in-flight requests finish where they are."""

    def state(self) -> TrafficState:
        """Whether the proxy runs, its active upstream port and per-upstream counters."""

    def wait_drained(self, port: int, timeout: float) -> bool:
        """Wait until no request is in flight to `port`; False when `timeout` seconds pass first."""

    def stop(self) -> None:
        """Stop the proxy (gracefully: in-flight requests finish)."""

    def hold(self, owner: HoldOwner, timeout: float) -> HoldMode:
        """Stop new requests from reaching any upstream, for `owner` and at most `timeout` seconds
        of waiting; in-flight requests go on (the caller waits for them with `wait_drained`)."""

    def release(self) -> dict[str, object] | None:
        """End the hold: new and waiting requests go to the active upstream. What the hold did
        (seconds, requests held and refused), or None when nothing was held."""

    def check_hold(self) -> str | None:
        """End a hold whose owner died; why it was ended, or None. Called by the agent's
        supervision loop, so a crashed rollback does not leave the site paused."""
