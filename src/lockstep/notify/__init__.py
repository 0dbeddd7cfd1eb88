"""Notifications: one module per channel kind, all behind the small `Channel` Protocol below.

The module name is the word users write as `kind` in `[[notifications.channels]]` (with "-" as
"_": `github-actions` → `github_actions.py`), and `dispatcher.Notifier` builds channels by that
name, as the database adapters are chosen by URL scheme. A channel receives only the event's
redacted document, never the Event, and raises `DeliveryError` when it could not deliver; the
dispatcher owns threads, timeouts, retries and warnings, so a channel module stays a plain
"format and send once".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from lockstep.notify.transport import url_password_texts
from lockstep.redaction import Redactor

# Shorter pieces of a secret URL ("/hook", "/ping") are names, not tokens; masking them would mangle text.
_MINIMUM_URL_PIECE = 8


class DeliveryError(Exception):
    """One attempt to deliver failed. `permanent` means retrying cannot help (bad credentials, no URL)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Channel(Protocol):
    """Something that delivers one redacted event document, once, within `timeout` seconds."""

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Deliver `document` (an Event's redacted `to_document()`); raise DeliveryError on failure."""
        ...


@dataclass(frozen=True)
class ChannelSetup:
    """What a channel module's `build` gets besides its config.

    Channels read their secrets (from `environ` or files) when built and hand them to `redactor`
    at once, so no warning or payload can show them afterwards.
    """

    base_directory: Path
    environ: Mapping[str, str]
    redactor: Redactor
    stdout: Callable[[], TextIO]
    project: str | None = None

    @property
    def project_name(self) -> str:
        """The project's name (lockstep.toml's `project`), else its directory's, as snapshots are named."""
        return self.project or self.base_directory.name or "project"

    def resolve(self, path: Path) -> Path:
        """`path` relative to the directory of lockstep.toml, unless it is absolute already."""
        return path if path.is_absolute() else self.base_directory / path

    def variable(self, name: str | None) -> str | None:
        """The value of environment variable `name` (None when unset or empty), registered as a secret."""
        if name is None:
            return None
        value = self.environ.get(name) or None
        self.redactor.add(value)
        return value

    def secret_url(self, name: str | None) -> str | None:
        """Like `variable`, for a URL that is itself the credential (a Slack webhook, a ping URL).

        Its path and last path segment are registered too: the token may show up without the host.
        """
        url = self.variable(name)
        if url is not None:
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            for piece in (path, parts.path.rstrip("/").rsplit("/", 1)[-1]):
                if len(piece) >= _MINIMUM_URL_PIECE:
                    self.redactor.add(piece)
            for password in url_password_texts(url):  # sent as basic auth (transport)
                self.redactor.add(password)
        return url
