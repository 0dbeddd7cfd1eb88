"""The Notifier: hands events to every matching channel without ever slowing or failing a deploy.

Each channel gets its own worker thread and queue, started on its first event, so a Slack outage
delays only Slack. An attempt is bounded by `timeout_seconds`; a failed one is retried after
`retry_delay_seconds`, doubling, up to `attempts`; after the last failure (or at once when retrying
cannot help) one warning names the channel and the reason. Everything a channel sees and every
warning has passed through the Redactor. `close()` gives queued events until its timeout to go out
and then returns regardless, saying which channels still had events.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from lockstep.notify import Channel, ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig, NotificationsConfig
from lockstep.notify.events import Event
from lockstep.redaction import Redactor

# Channel kind → module in lockstep.notify (the module name is the kind, with "_" for "-").
MODULES: dict[str, str] = {
    "slack": "slack",
    "webhook": "webhook",
    "email": "email",
    "healthchecks": "healthchecks",
    "github-actions": "github_actions",
    "event-log": "event_log",
    "ntfy": "ntfy",
    "pagerduty": "pagerduty",
}

_STOP = object()


def _print_warning(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_channel(config: ChannelConfig, setup: ChannelSetup) -> Channel:
    """The channel for `config`, from the module named after its kind."""
    module = importlib.import_module(f"lockstep.notify.{MODULES[config.kind]}")
    channel: Channel = module.build(config, setup)
    return channel


class _Worker:
    """One channel's queue and thread."""

    def __init__(
        self, notifier: Notifier, name: str, config: ChannelConfig, channel: Channel | None, problem: str | None
    ) -> None:
        self.notifier = notifier
        self.name = name
        self.config = config
        self.channel = channel
        self.problem = problem
        self.queue: queue.Queue[object] = queue.Queue()
        self.pending = 0
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def submit(self, document: Mapping[str, Any]) -> None:
        with self.lock:
            self.pending += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=f"lockstep-notify-{self.name}", daemon=True)
                self.thread.start()
        self.queue.put(document)

    def stop(self) -> None:
        with self.lock:
            started = self.thread is not None
        if started:
            self.queue.put(_STOP)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Mapping)
            try:
                self._deliver(item)
            except Exception as error:  # a bug in a channel must not kill the worker or reach the caller
                self.notifier._warn(f"{self._label()}: {type(error).__name__}: {error}; {item.get('kind')} not sent")
            finally:
                with self.lock:
                    self.pending -= 1

    def _label(self) -> str:
        return f"notification channel {self.name} ({self.config.kind})"

    def _deliver(self, document: Mapping[str, Any]) -> None:
        settings = self.notifier.config
        kind = document.get("kind")
        if self.channel is None:
            self.notifier._warn(f"{self._label()} is not usable: {self.problem}; {kind} not sent")
            return
        attempt = 0
        delay = settings.retry_delay_seconds
        while True:
            attempt += 1
            if self.notifier._abandoned.is_set():
                return
            try:
                self.channel.send(document, settings.timeout_seconds)
                return
            except DeliveryError as error:
                if error.permanent or attempt >= settings.attempts:
                    if not self.notifier._abandoned.is_set():
                        tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
                        self.notifier._warn(f"{self._label()} failed after {tries}: {error.reason}; {kind} not sent")
                    return
            if self.notifier._abandoned.wait(delay):
                return
            delay *= 2


class Notifier:
    """Sends events to the configured channels in the background. `notify` never raises or blocks for long.

    `base_directory` anchors relative paths (event-log path, password_file, ca_file); `environment`
    fills in events that name none. Channels read their secrets from `environ` when the Notifier is
    built and register them with `redactor` (by default one that knows the secret-named variables
    of `environ`). Warnings go to `warn`, one line each, default stderr. `project` names the
    project in what channels send (PagerDuty's incident key); default: `base_directory`'s name.
    """

    def __init__(
        self,
        config: NotificationsConfig,
        base_directory: Path,
        environment: str | None = None,
        *,
        redactor: Redactor | None = None,
        warn: Callable[[str], None] | None = None,
        environ: Mapping[str, str] | None = None,
        stdout: Callable[[], TextIO] | None = None,
        project: str | None = None,
    ) -> None:
        self.config = config
        self.environment = environment
        environ = os.environ if environ is None else environ
        self.redactor = redactor if redactor is not None else Redactor.from_environment(environ)
        self._warn_to = warn if warn is not None else _print_warning
        self._warn_lock = threading.Lock()
        self._abandoned = threading.Event()
        self._closed = False
        setup = ChannelSetup(
            base_directory=base_directory,
            environ=environ,
            redactor=self.redactor,
            stdout=stdout if stdout is not None else (lambda: sys.stdout),
            project=project,
        )
        self._workers: list[_Worker] = []
        for index, channel_config in enumerate(config.channels):
            name = channel_config.display_name(index)
            channel: Channel | None = None
            problem: str | None = None
            try:
                channel = build_channel(channel_config, setup)
            except Exception as error:  # a broken channel is reported on use, never fails the command
                problem = f"{type(error).__name__}: {error}"
            self._workers.append(_Worker(self, name, channel_config, channel, problem))

    @property
    def channel_names(self) -> list[str]:
        """The channels' names as warnings show them, in config order."""
        return [worker.name for worker in self._workers]

    def notify(self, event: Event) -> None:
        """Queue `event` for every channel whose filter matches it; return at once, never raise."""
        try:
            if self._closed:
                return
            event = event.with_environment(self.environment)
            matching = [worker for worker in self._workers if _wants(worker.config, event.kind)]
            if not matching:
                return
            document = self.redactor.redact_document(event.to_document())
            for worker in matching:
                worker.submit(document)
        except Exception as error:  # notifying must never fail the deploy that triggered it
            self._warn(f"notification of {getattr(event, 'kind', '?')} failed: {type(error).__name__}: {error}")

    def close(self, timeout: float = 10.0) -> None:
        """Give queued events up to `timeout` seconds to go out, then return; later events are ignored."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(timeout, 0.0)
        for worker in self._workers:
            worker.stop()
        for worker in self._workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = [(worker, worker.pending) for worker in self._workers if worker.pending > 0]
        self._abandoned.set()
        for worker, pending in unfinished:
            events = "1 event" if pending == 1 else f"{pending} events"
            self._warn(f"{worker._label()}: {events} not sent within {timeout:g} s before exit")

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _warn(self, message: str) -> None:
        try:
            line = "warning: " + self.redactor.redact(message)
            with self._warn_lock:
                self._warn_to(line)
        except Exception:  # a failing warning sink (closed stderr) must not surface either
            pass


def _wants(config: ChannelConfig, kind: str) -> bool:
    """Whether a channel hears events of `kind`: its filter, and for PagerDuty the successes that
    resolve the alerts its filter lets it open."""
    if any(fnmatch.fnmatchcase(kind, pattern) for pattern in config.events):
        return True
    if config.kind != "pagerduty":
        return False
    from lockstep.notify.pagerduty import resolves_an_opened_alert  # channels load lazily, as in _channel

    return resolves_an_opened_alert(kind, config.events)
