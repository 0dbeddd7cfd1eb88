"""Pings to a healthchecks-style URL: URL/start, URL (success) and URL/fail with a short reason.

A monitoring ping exists to report on the backup, never to decide it: a ping that cannot get
through is retried a few times with a short timeout, then reported as a warning, and the
backup's own outcome stands. The body goes to a third party, so it is short and every known
secret is blanked out of it before it leaves.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lockstep import __version__
from lockstep.notify.transport import describe_http_error, open_within, outgoing_request

TIMEOUT_SECONDS = 5.0
ATTEMPTS = 3
RETRY_DELAY_SECONDS = 0.5
MAX_BODY_CHARACTERS = 1000

Warn = Callable[[str], None]


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (longest first, so one inside another cannot leak) replaced by ***."""
    for secret in sorted((secret for secret in secrets if secret), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _shown(url: str) -> str:
    """The ping URL's host and port (a self-hosted server's port tells which one failed), no
    credentials: its path usually holds the check's secret UUID."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass
class HealthchecksPinger:
    """Pings one check URL; without a URL every ping is a no-op."""

    url: str | None
    warn: Warn
    secrets: list[str] = field(default_factory=list)
    timeout_seconds: float = TIMEOUT_SECONDS
    attempts: int = ATTEMPTS
    sent: list[str] = field(default_factory=list)  # the suffixes that got through, for reports and tests

    def start(self) -> bool:
        return self._ping("/start", "")

    def success(self, body: str) -> bool:
        return self._ping("", body)

    def fail(self, reason: str) -> bool:
        return self._ping("/fail", reason)

    def _ping(self, suffix: str, body: str) -> bool:
        """POST the body to URL+suffix; True when it got through, False (after a warning) otherwise."""
        if not self.url:
            return True
        data = redact_secrets(body, self.secrets)[:MAX_BODY_CHARACTERS].encode("utf-8")
        request = outgoing_request(
            self.url.rstrip("/") + suffix,
            data,
            "POST",
            {"User-Agent": f"lockstep/{__version__}", "Content-Type": "text/plain; charset=utf-8"},
        )
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(RETRY_DELAY_SECONDS * attempt)
            try:
                open_within(request, self.timeout_seconds)  # the whole ping, a slow answer included
                self.sent.append(suffix or "/")
                return True
            except urllib.error.HTTPError as error:
                problem = describe_http_error(error)
                if error.code < 500 and error.code != 429:
                    break  # the URL is wrong (or redirects): retrying will not help
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                problem = str(reason) or type(error).__name__
            except http.client.HTTPException as error:  # not HTTP (BadStatusLine), an answer cut short
                problem = f"not a valid HTTP answer: {type(error).__name__}"
            except Exception as error:  # a ping never decides the backup's outcome
                problem = f"{type(error).__name__}: {error}"
        name = suffix.lstrip("/") or "success"
        self.warn(f"the {name} ping to {_shown(self.url)} failed ({redact_secrets(problem, self.secrets)}); continuing")
        return False
