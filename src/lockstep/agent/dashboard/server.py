"""The dashboard's HTTP server: a stdlib ThreadingHTTPServer on `agent.dashboard_listen`.

Routes (everything but the login page and static files needs the token, as a session cookie
from the login page or an `Authorization: Bearer TOKEN` header):

  GET  /                         the dashboard page (redirects to /login without a session)
  GET  /login, POST /login       ask for the token; a wrong one is a 401, repeated ones a 429
                                 (wrong bearer tokens on the API and /metrics count the same)
  POST /logout                   end the session
  GET  /static/NAME              index.html's script and style sheet
  GET  /metrics                  Prometheus text format (no token with agent.metrics_without_token)
  GET  /api/session              the CSRF token the page sends with every POST
  GET  /api/environment          status: active slot, release, commit, health, lock
  GET  /api/timeline             deploys, rollbacks, snapshots, verifications
  GET  /api/snapshots            the snapshot list with sizes and verification state
  GET  /api/rollback/targets     the releases a rollback can go to, newest first, and the default
  GET  /api/rollback/preview     where a rollback goes (?to=RELEASE, else the previous release);
                                 ?with_data=1: what the restore discards
  POST /api/rollback             {confirm: ENVIRONMENT, with_data, to} -> {id}; needs a session and
                                 its CSRF header (a bearer token only reads)
  GET  /api/rollback/ID          the rollback's state and output (also after an agent restart)
"""

from __future__ import annotations

import html
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.dashboard import metrics, views
from lockstep.agent.dashboard.auth import CSRF_HEADER, SESSION_COOKIE, SESSION_LIFETIME, Gatekeeper, Session
from lockstep.agent.dashboard.collector import DashboardData
from lockstep.agent.dashboard.rollback_job import RollbackRunner
from lockstep.agent.service import AgentService
from lockstep.errors import LockstepError, UsageError
from lockstep.pipeline.notifications import secrets_redactor
from lockstep.redaction import Redactor

MAX_BODY = 64 * 1024
STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DashboardTokenMissing(UsageError):
    """dashboard_listen is set but the token variable is empty: refuse rather than serve openly."""


class DashboardListenFailed(LockstepError):
    """The dashboard's address cannot be bound."""


def _static(name: str) -> bytes:
    return resources.files("lockstep.agent.dashboard").joinpath("static", name).read_bytes()


def dashboard_token(context: EnvironmentContext) -> str:
    """The token from the variable `agent.dashboard_token_env` names; refuses to go on without one."""
    variable = context.config.agent.dashboard_token_env
    token = os.environ.get(variable, "").strip()
    if not token:
        raise DashboardTokenMissing(
            f"agent.dashboard_listen is set but {variable} is empty: without a token the dashboard does not start",
            f"set {variable} in the agent's environment to a long random value (e.g. `openssl rand -hex 32`), "
            "or remove dashboard_listen from [agent]",
        )
    return token


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCPServer6(_TCPServer):
    address_family = socket.AF_INET6


class DashboardServer:
    """Serves the dashboard and /metrics for one environment until `shutdown()`."""

    def __init__(self, context: EnvironmentContext, service: AgentService, token: str, listen: str) -> None:
        self.context = context
        self.data = DashboardData(context, service)
        self.gatekeeper = Gatekeeper(token, service.state)
        self.rollbacks = RollbackRunner(context)
        self.redactor: Redactor = secrets_redactor(context)
        self.redactor.add(token)
        host, port = split_listen(listen)
        handler = _handler_class(self)
        server_class = _TCPServer6 if ":" in host else _TCPServer
        try:
            self._server = server_class((host, port), handler)
        except OSError as error:
            raise DashboardListenFailed(
                f"the dashboard cannot listen on {listen}: {error.strerror or error}",
                "pick a free address for agent.dashboard_listen, or stop what uses it",
            ) from error
        self.address = self._server.server_address
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="dashboard", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = str(self.address[0]), int(self.address[1])
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.rollbacks.wait_all(timeout=1.0)


def start_dashboard(context: EnvironmentContext, service: AgentService) -> DashboardServer | None:
    """Start the dashboard when `agent.dashboard_listen` is set; raises when its token is missing."""
    listen = context.config.agent.dashboard_listen
    if listen is None:
        return None
    server = DashboardServer(context, service, dashboard_token(context), listen)
    server.start()
    return server


def _handler_class(dashboard: DashboardServer) -> type[BaseHTTPRequestHandler]:
    gatekeeper = dashboard.gatekeeper
    data = dashboard.data
    environment = dashboard.context.environment
    open_metrics = dashboard.context.config.agent.metrics_without_token

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lockstep-dashboard"
        sys_version = ""
        throttled = False  # set by _authorized: this request was refused for too many wrong tokens

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the agent's log is about the app, not page views

        # -- replies -----------------------------------------------------------------------------

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, document: Any, redact: bool = True) -> None:
            if redact:
                document = dashboard.redactor.redact_document(document)
            self._send(status, json.dumps(document).encode("utf-8"), "application/json")

        def _error(self, status: int, message: str, hint: str | None = None) -> None:
            self._json(status, {"error": message, "hint": hint})

        def _redirect(self, location: str, headers: dict[str, str] | None = None) -> None:
            self._send(303, b"", "text/plain", {"Location": location, **(headers or {})})

        def _login_page(self, status: int, message: str | None = None) -> None:
            page = _static("login.html").decode("utf-8")
            page = page.replace("{{environment}}", html.escape(environment))
            notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
            self._send(status, page.replace("{{message}}", notice).encode("utf-8"), "text/html; charset=utf-8")

        # -- who is asking -----------------------------------------------------------------------

        def _session(self) -> Session | None:
            for part in (self.headers.get("Cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == SESSION_COOKIE:
                    return gatekeeper.session(value)
            return None

        def _authorized(self) -> bool:
            """A live session, or a bearer token. A wrong bearer token counts as a wrong guess, as at
            /login: otherwise the API and /metrics were a way round the brake on guessing."""
            self.throttled = False
            if self._session() is not None:
                return True
            authorization = self.headers.get("Authorization")
            if not authorization:
                return False
            client = self.client_address[0]
            if gatekeeper.throttled(client):
                self.throttled = True
                return False
            if gatekeeper.bearer_matches(authorization):
                return True
            gatekeeper.record_failure(client)
            return False

        def _refuse(self) -> None:
            """401 for a request without the token; 429 once its client guessed wrong too often."""
            if self.throttled:
                self._error(429, "too many wrong tokens", "wait a minute before trying again")
            else:
                self._error(401, "the dashboard token is required", "log in at /login")

        def _read_body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True  # the unread body must not be taken for the next request
                self._error(413, "the request body is too large")
                return None
            return self.rfile.read(length) if length else b""

        # -- methods -----------------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path = url.path
            query = parse_qs(url.query)
            try:
                if path == "/login":
                    self._login_page(200)
                elif path.startswith("/static/"):
                    self._static_file(path.removeprefix("/static/"))
                elif path == "/metrics":
                    self._metrics()
                elif path in ("/", "/index.html"):
                    if self._session() is None:
                        self._redirect("/login")
                    else:
                        page = (
                            _static("index.html").decode("utf-8").replace("{{environment}}", html.escape(environment))
                        )
                        self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
                elif not path.startswith("/api/"):
                    self._error(404, f"no such page: {path}")
                elif not self._authorized():
                    self._refuse()
                else:
                    self._api_get(path, query)
            except Exception as error:  # the agent must survive any request
                self._error(
                    500, f"the dashboard failed: {type(error).__name__}: {dashboard.redactor.redact(str(error))}"
                )

        def _static_file(self, name: str) -> None:
            content_type = STATIC_FILES.get(name)
            if content_type is None:
                self._error(404, f"no such file: {name}")
                return
            self._send(200, _static(name), content_type)

        def _metrics(self) -> None:
            if not open_metrics and not self._authorized():
                self._send(
                    429 if self.throttled else 401,
                    b"too many wrong tokens: wait a minute before trying again\n"
                    if self.throttled
                    else b"the dashboard token is required: send it as 'Authorization: Bearer TOKEN'\n",
                    "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Bearer realm="lockstep"'},
                )
                return
            text = dashboard.redactor.redact(metrics.collect(data))
            self._send(200, text.encode("utf-8"), metrics.CONTENT_TYPE)

        def _api_get(self, path: str, query: dict[str, list[str]]) -> None:
            if path == "/api/session":
                session = self._session()
                self._json(
                    200, {"environment": environment, "csrf": None if session is None else session.csrf_token}, False
                )
            elif path == "/api/environment":
                self._json(200, views.environment_document(data))
            elif path == "/api/timeline":
                self._json(200, views.timeline_document(data))
            elif path == "/api/snapshots":
                self._json(200, views.snapshots_document(data))
            elif path == "/api/rollback/targets":
                self._json(200, views.rollback_targets(data))
            elif path == "/api/rollback/preview":
                with_data = query.get("with_data", ["0"])[0] in ("1", "true", "yes")
                to = query.get("to", [""])[0].strip() or None
                self._json(200, views.rollback_preview(data, with_data, to))
            elif path.startswith("/api/rollback/"):
                job = dashboard.rollbacks.job(path.removeprefix("/api/rollback/"))
                if job is None:
                    self._error(404, "no such rollback")
                else:
                    self._json(200, job.to_document())
            else:
                self._error(404, f"no such endpoint: {path}")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            try:
                body = self._read_body()
                if body is None:
                    return
                if path == "/login":
                    self._login(body)
                    return
                session = self._session()
                if session is None and self.headers.get("Authorization"):
                    # The same answer whether the token is right or wrong: it must not tell a guess
                    # apart (bearer tokens on POST are not throttled, as they never open anything).
                    self._error(
                        401,
                        f"POST {path} needs a session from the login page: a bearer token only reads "
                        "(GET /api/..., /metrics)",
                        f"log in at /login, then send the {CSRF_HEADER} header from GET /api/session",
                    )
                elif session is None:
                    self._error(401, "the dashboard token is required", "log in at /login")
                elif not gatekeeper.csrf_matches(session, self.headers.get(CSRF_HEADER)):
                    self._error(403, f"missing or wrong {CSRF_HEADER} header", "reload the page and try again")
                elif path == "/logout":
                    gatekeeper.close_session(session.identifier)
                    self._json(200, {"logged_out": True}, False)
                elif path == "/api/rollback":
                    self._start_rollback(body)
                else:
                    self._error(404, f"no such endpoint: POST {path}")
            except Exception as error:
                self._error(
                    500, f"the dashboard failed: {type(error).__name__}: {dashboard.redactor.redact(str(error))}"
                )

        def _login(self, body: bytes) -> None:
            client = self.client_address[0]
            if gatekeeper.throttled(client):
                self._login_page(429, "Too many wrong tokens: wait a minute before trying again.")
                return
            offered = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
            if not offered or not gatekeeper.token_matches(offered):
                gatekeeper.record_failure(client)
                variable = dashboard.context.config.agent.dashboard_token_env
                self._login_page(401, f"Wrong token. Use the value of {variable} from the agent's environment.")
                return
            session = gatekeeper.open_session()
            cookie = (
                f"{SESSION_COOKIE}={session.identifier}; HttpOnly; SameSite=Strict; Path=/; "
                f"Max-Age={int(SESSION_LIFETIME)}"
            )
            self._redirect("/", {"Set-Cookie": cookie})

        def _start_rollback(self, body: bytes) -> None:
            try:
                request = json.loads(body or b"{}")
            except json.JSONDecodeError:
                self._error(400, "the request body is not JSON")
                return
            if not isinstance(request, dict) or request.get("confirm") != environment:
                self._error(400, f"type the environment name ({environment}) to confirm the rollback")
                return
            to = request.get("to")
            if to is not None and not isinstance(to, str):
                self._error(400, "the rollback target must be a release ID (a string)")
                return
            try:
                target = views.resolve_rollback_target(data, to.strip() if to else None)
            except LockstepError as error:
                self._error(400, f"cannot roll back to {to!r}: {error.message}", error.hint)
                return
            try:
                job = dashboard.rollbacks.start(bool(request.get("with_data")), target)
            except LockstepError as error:
                self._error(409, error.message, error.hint)
                return
            data.refresh_repository()
            self._json(202, job.to_document())

    return RequestHandler
