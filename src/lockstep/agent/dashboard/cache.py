"""A value refreshed in the background, so a slow source (a remote repository, a hanging health
check) never holds an HTTP request for longer than the caller is willing to wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class BackgroundValue(Generic[Value]):
    """The last result of `produce`, recomputed by one worker thread at a time when asked and stale."""

    def __init__(self, produce: Callable[[], Value], max_age: float, name: str) -> None:
        self._produce = produce
        self.max_age = max_age
        self._name = name
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._value: Value | None = None
        self._produced_at = 0.0
        self._running = False
        self._requested = 0  # invalidations so far
        self._satisfied = 0  # invalidations the current value already reflects

    def invalidate(self) -> None:
        """Make the next `get` start a refresh even if the value is young."""
        with self._lock:
            self._requested += 1

    def get(self, wait: float = 0.0) -> Value | None:
        """The current value (None before the first one), starting a refresh when it is stale.

        With `wait`, block up to that many seconds for a refresh that is running or just started,
        so a caller that knows the value is outdated can get the new one when it comes quickly.
        """
        with self._lock:
            stale = (
                self._value is None
                or time.monotonic() - self._produced_at > self.max_age
                or self._requested > self._satisfied
            )
            if stale and not self._running:
                self._running = True
                threading.Thread(target=self._refresh, args=(self._requested,), name=self._name, daemon=True).start()
            if stale and wait > 0:
                deadline = time.monotonic() + wait
                while self._running and (remaining := deadline - time.monotonic()) > 0:
                    self._done.wait(remaining)
            return self._value

    def _refresh(self, requested: int) -> None:
        try:
            value = self._produce()
        except BaseException:
            with self._lock:
                self._running = False
                self._done.notify_all()
            raise
        with self._lock:
            self._value = value
            self._produced_at = time.monotonic()
            self._satisfied = requested
            self._running = False
            self._done.notify_all()
