"""Who may see the dashboard: the token, the sessions it opens, and a brake on guessing it.

The token is compared in constant time. A session is a random cookie value (HttpOnly,
SameSite=Strict) with its own CSRF token, which every state-changing request must echo in a
header: a page on another origin can make the browser send the cookie, but cannot read the
CSRF token to send along.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

SESSION_COOKIE = "lockstep_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = 12 * 3600.0
FAILURES_ALLOWED = 5
FAILURE_WINDOW = 60.0


@dataclass(frozen=True)
class Session:
    identifier: str
    csrf_token: str
    expires: float


class Gatekeeper:
    """Checks the token, keeps the sessions it opened, and throttles wrong guesses per client."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def token_matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8"), self._token)

    def bearer_matches(self, authorization: str | None) -> bool:
        """An `Authorization: Bearer TOKEN` header with the right token (for Prometheus and scripts)."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def throttled(self, client: str) -> bool:
        """Whether `client` guessed wrong FAILURES_ALLOWED times within the last minute."""
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return False
            while failures and failures[0] < time.monotonic() - FAILURE_WINDOW:
                failures.popleft()
            return len(failures) >= FAILURES_ALLOWED

    def record_failure(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, deque(maxlen=FAILURES_ALLOWED * 2)).append(time.monotonic())

    def open_session(self) -> Session:
        session = Session(
            identifier=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            expires=time.time() + SESSION_LIFETIME,
        )
        with self._lock:
            now = time.time()
            self._sessions = {key: value for key, value in self._sessions.items() if value.expires > now}
            self._sessions[session.identifier] = session
        return session

    def session(self, identifier: str | None) -> Session | None:
        """The live session with this cookie value, if any (compared in constant time)."""
        if not identifier:
            return None
        with self._lock:
            for key, session in self._sessions.items():
                if hmac.compare_digest(key.encode("utf-8"), identifier.encode("utf-8")):
                    return session if session.expires > time.time() else None
        return None

    def close_session(self, identifier: str | None) -> None:
        with self._lock:
            self._sessions.pop(identifier or "", None)

    @staticmethod
    def csrf_matches(session: Session, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(
            session.csrf_token.encode("utf-8"), (offered or "").encode("utf-8")
        )
