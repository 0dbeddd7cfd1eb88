"""healthchecks.io-style ping URLs: URL/start when a deploy starts, URL on success, URL/fail on failure.

Events outside that mapping send nothing, so the check's state always means "the last deploy".
The summary goes along as the request body, which healthchecks shows in the ping's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lockstep.notify import ChannelSetup
from lockstep.notify.config import ChannelConfig
from lockstep.notify.events import DEPLOY_FAILED, DEPLOY_ROLLED_BACK, DEPLOY_STARTED, DEPLOY_SUCCEEDED
from lockstep.notify.webhook import missing_url, request, url_from

# Event kind → suffix appended to the ping URL.
PING_SUFFIXES: dict[str, str] = {
    DEPLOY_STARTED: "/start",
    DEPLOY_SUCCEEDED: "",
    DEPLOY_FAILED: "/fail",
    DEPLOY_ROLLED_BACK: "/fail",
}
_MAX_BODY = 10_000  # healthchecks keeps the first 10 kB of a ping body


def ping_url(base: str, kind: str) -> str | None:
    """The URL to request for an event of `kind`, or None when this kind sends no ping."""
    suffix = PING_SUFFIXES.get(kind)
    if suffix is None:
        return None
    path, question, query = base.partition("?")
    return path.rstrip("/") + suffix + question + query


class HealthchecksChannel:
    """Pings start/success/fail URLs."""

    def __init__(self, url: str | None, config: ChannelConfig) -> None:
        self._url = url
        self._config = config

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Ping the URL that matches the event's kind, if any."""
        if self._url is None:
            raise missing_url(self._config)
        url = ping_url(self._url, str(document.get("kind")))
        if url is None:
            return
        body = str(document.get("summary", "")).encode("utf-8")[:_MAX_BODY]
        request(url, body, {"Content-Type": "text/plain; charset=utf-8"}, timeout)


def build(config: ChannelConfig, setup: ChannelSetup) -> HealthchecksChannel:
    """A healthchecks channel; a URL from url_env is registered as a secret."""
    return HealthchecksChannel(url_from(config, setup), config)
