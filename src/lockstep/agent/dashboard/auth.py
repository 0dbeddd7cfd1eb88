"""Who may see the dashboard: the token, the sessions it opens, and a brake on guessing it.

The token is compared in constant time. A session is a random cookie value (HttpOnly,
SameSite=Strict) with its own CSRF token, which every state-changing request must echo in a
header: a page on another origin can make the browser send the cookie, but cannot read the
CSRF token to send along.

Sessions are kept in the agent's SQLite state, so restarting the agent logs nobody out. What is
stored is an HMAC of the cookie value keyed with the dashboard token, and the expiry: reading the
state file gives no usable cookie, and changing the token makes every old session unknown. The
CSRF token is derived the same way, so it needs no storage either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

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


class SessionStore(Protocol):
    """Where sessions live between requests (and agent restarts): AgentState, or memory."""

    def save_dashboard_session(self, digest: str, expires: float) -> None: ...

    def dashboard_session_expiry(self, digest: str) -> float | None: ...

    def delete_dashboard_session(self, digest: str) -> None: ...


class MemorySessionStore:
    """Sessions for the life of the process: for tests and tools without an agent state."""

    def __init__(self) -> None:
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()

    def save_dashboard_session(self, digest: str, expires: float) -> None:
        with self._lock:
            now = time.time()
            self._sessions = {key: value for key, value in self._sessions.items() if value > now}
            self._sessions[digest] = expires

    def dashboard_session_expiry(self, digest: str) -> float | None:
        with self._lock:
            return self._sessions.get(digest)

    def delete_dashboard_session(self, digest: str) -> None:
        with self._lock:
            self._sessions.pop(digest, None)


class Gatekeeper:
    """Checks the token, keeps the sessions it opened, and throttles wrong guesses per client."""

    def __init__(self, token: str, store: SessionStore | None = None) -> None:
        self._token = token.encode("utf-8")
        self._store: SessionStore = store if store is not None else MemorySessionStore()
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

    def _keyed(self, purpose: str, identifier: str) -> str:
        """HMAC-SHA256 of the cookie value under the token: what is stored, and the CSRF token."""
        return hmac.new(self._token, f"{purpose}:{identifier}".encode(), hashlib.sha256).hexdigest()

    def open_session(self) -> Session:
        identifier = secrets.token_urlsafe(32)
        session = Session(identifier, self._keyed("csrf", identifier), time.time() + SESSION_LIFETIME)
        self._store.save_dashboard_session(self._keyed("session", identifier), session.expires)
        return session

    def session(self, identifier: str | None) -> Session | None:
        """The live session with this cookie value, if any: known under this token and not expired."""
        if not identifier:
            return None
        expires = self._store.dashboard_session_expiry(self._keyed("session", identifier))
        if expires is None or expires <= time.time():
            return None
        return Session(identifier, self._keyed("csrf", identifier), expires)

    def close_session(self, identifier: str | None) -> None:
        if identifier:
            self._store.delete_dashboard_session(self._keyed("session", identifier))

    @staticmethod
    def csrf_matches(session: Session, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(
            session.csrf_token.encode("utf-8"), (offered or "").encode("utf-8")
        )
