"""The one interface every traffic switch implements, so deploys do not care which proxy runs.

A switch listens on one public address and forwards every request to one upstream port, the
active slot's. `switch_to` is atomic: requests that started before it finish on the old upstream,
requests that start after it go to the new one, and none fails in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
