"""The dashboard over HTTP against a real agent: the token, the session cookie, CSRF, the JSON
documents the page renders, and no secret in any of them."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from lockstep.agent.dashboard.cache import BackgroundValue
from tests.conftest import TEST_PASSWORD
from tests.deploy.conftest import NotesProject, _stop_everything, deploy_three_releases, free_ports, make_project

TOKEN = "dashboard-test-token-7d3e91b0"
LEAKED = "hunter2-not-for-the-dashboard"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read().decode("utf-8"))
    finally:
        connection.close()


def login(port: int, token: str = TOKEN, source: str = "127.0.0.1") -> Reply:
    form = urlencode({"token": token}).encode()
    return request(port, "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}, source=source)


def session_cookie(reply: Reply) -> str:
    cookie = reply.headers["Set-Cookie"]
    assert cookie is not None
    return cookie.split(";", 1)[0]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NotesProject, int]]:
    """One agent with the dashboard, after one deploy whose message holds markup and a secret."""
    (port,) = free_ports(1)
    project = make_project(
        tmp_path_factory.mktemp("dashboard"), extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\n'
    )
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.start_agent()
    try:
        completed = project.lockstep("deploy", "-m", f"<script>alert(1)</script> API_TOKEN={LEAKED}")
        assert completed.returncode == 0, completed.err
        yield project, port
    finally:
        _stop_everything(project)


def test_agent_refuses_to_start_without_the_token(tmp_path: Path) -> None:
    """dashboard_listen without the token variable: the agent exits at once, naming the variable."""
    (port,) = free_ports(1)
    project = make_project(tmp_path, extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\n')
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = ""
    completed = project.lockstep("agent", timeout=120)
    assert completed.returncode == 2, completed.err
    assert "LOCKSTEP_DASHBOARD_TOKEN" in completed.err and "dashboard_listen" in completed.err
    assert not (project.directory / ".lockstep" / "state" / "test" / "agent.sock").exists()


def test_everything_but_the_login_page_needs_the_token(deployed: tuple[NotesProject, int]) -> None:
    """The page redirects to /login; the API and /metrics answer 401; a bearer token opens the API."""
    _, port = deployed
    page = request(port, "GET", "/")
    assert page.status == 303 and page.headers["Location"] == "/login"
    for path in ("/api/environment", "/api/timeline", "/api/snapshots", "/api/rollback/preview", "/api/session"):
        reply = request(port, "GET", path)
        assert reply.status == 401, path
        assert "token" in reply.json()["error"]
    assert request(port, "GET", "/metrics").status == 401
    assert request(port, "GET", "/api/environment", headers={"Authorization": "Bearer wrong"}).status == 401
    assert request(port, "GET", "/api/environment", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    login_page = request(port, "GET", "/login")
    assert login_page.status == 200 and 'name="token"' in login_page.body


def test_a_wrong_token_is_a_401_with_a_clear_message_and_guessing_is_throttled(
    deployed: tuple[NotesProject, int],
) -> None:
    """Wrong tokens: 401 naming the variable, no cookie; after five in a minute even the right one waits."""
    _, port = deployed
    source = "127.0.0.2"  # its own client address, so the throttle does not hit the other tests
    wrong = login(port, "not-the-token", source=source)
    assert wrong.status == 401
    assert "Wrong token" in wrong.body and "LOCKSTEP_DASHBOARD_TOKEN" in wrong.body
    assert wrong.headers["Set-Cookie"] is None
    assert login(port, "", source=source).status == 401
    for _ in range(3):
        assert login(port, "still-wrong", source=source).status == 401
    throttled = login(port, TOKEN, source=source)
    assert throttled.status == 429 and "wait a minute" in throttled.body
    assert throttled.headers["Set-Cookie"] is None
    assert login(port).status == 303  # another client is not affected


def test_guessing_the_bearer_token_is_throttled_like_the_login_form(deployed: tuple[NotesProject, int]) -> None:
    """Wrong `Authorization: Bearer` guesses on the API and /metrics count as wrong tokens: after
    five in a minute the client gets 429, even with the right token. They used to be unlimited,
    which made the login form's throttle no brake at all."""
    _, port = deployed
    source = "127.0.0.3"  # its own client address, so the throttle does not hit the other tests
    for path in ("/api/environment", "/metrics", "/api/timeline", "/metrics", "/api/snapshots"):
        reply = request(port, "GET", path, headers={"Authorization": "Bearer guess"}, source=source)
        assert reply.status == 401, path
    for path in ("/api/environment", "/metrics"):
        reply = request(port, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"}, source=source)
        assert reply.status == 429, path
        assert "wait a minute" in reply.body
    assert login(port, TOKEN, source=source).status == 429
    other = request(port, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert other.status == 200  # another client is not affected


def test_login_sets_a_strict_http_only_session_cookie(deployed: tuple[NotesProject, int]) -> None:
    """The right token opens a session: HttpOnly, SameSite=Strict cookie; the page is served with a CSP."""
    _, port = deployed
    reply = login(port)
    assert reply.status == 303 and reply.headers["Location"] == "/"
    cookie_header = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
    cookie = session_cookie(reply)
    assert TOKEN not in cookie
    page = request(port, "GET", "/", headers={"Cookie": cookie})
    assert page.status == 200 and 'src="/static/app.js"' in page.body
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    session = request(port, "GET", "/api/session", headers={"Cookie": cookie}).json()
    assert session["environment"] == "test" and len(str(session["csrf"])) > 20
    assert request(port, "GET", "/api/environment", headers={"Cookie": "lockstep_session=forged"}).status == 401


def test_state_changing_requests_need_the_csrf_token(deployed: tuple[NotesProject, int]) -> None:
    """POST with the cookie alone is refused (403); with the CSRF token a wrong confirmation is a 400."""
    project, port = deployed
    cookie = session_cookie(login(port))
    csrf = str(request(port, "GET", "/api/session", headers={"Cookie": cookie}).json()["csrf"])
    body = json.dumps({"confirm": "test"}).encode()
    json_type = {"Content-Type": "application/json"}
    no_csrf = request(port, "POST", "/api/rollback", body, {**json_type, "Cookie": cookie})
    assert no_csrf.status == 403 and "X-CSRF-Token" in str(no_csrf.json()["error"])
    wrong = request(port, "POST", "/api/rollback", body, {**json_type, "Cookie": cookie, "X-CSRF-Token": "x" * 43})
    assert wrong.status == 403
    # A bearer token only reads. The answer said "the dashboard token is required" to a request
    # that carried the right token; it says what POST needs instead, the same for a wrong token.
    for offered in (TOKEN, "wrong"):
        bearer_only = request(port, "POST", "/api/rollback", body, {**json_type, "Authorization": f"Bearer {offered}"})
        assert bearer_only.status == 401
        error = bearer_only.json()
        assert "a bearer token only reads" in str(error["error"]) and "token is required" not in str(error["error"])
        assert "X-CSRF-Token" in str(error["hint"]) and "/login" in str(error["hint"])
    unconfirmed = request(
        port,
        "POST",
        "/api/rollback",
        json.dumps({"confirm": "production"}).encode(),
        {**json_type, "Cookie": cookie, "X-CSRF-Token": csrf},
    )
    assert unconfirmed.status == 400 and "type the environment name (test)" in str(unconfirmed.json()["error"])
    assert [record["operation"] for record in project.history()] == ["deploy"]
    logout = request(port, "POST", "/logout", b"{}", {**json_type, "Cookie": cookie, "X-CSRF-Token": csrf})
    assert logout.status == 200
    assert request(port, "GET", "/api/environment", headers={"Cookie": cookie}).status == 401


def test_a_bad_rollback_target_is_refused_and_nothing_happens(deployed: tuple[NotesProject, int]) -> None:
    """An unknown release, something shaped like an option, or a non-string: a 400 that says why."""
    project, port = deployed
    cookie = session_cookie(login(port))
    csrf = str(request(port, "GET", "/api/session", headers={"Cookie": cookie}).json()["csrf"])
    headers = {"Content-Type": "application/json", "Cookie": cookie, "X-CSRF-Token": csrf}
    targets = request(port, "GET", "/api/rollback/targets", headers={"Cookie": cookie}).json()
    assert targets["targets"] == [] and targets["current_release"] == project.status()["release"]
    for to, message in (
        ("no-such-release", "no successful release matches 'no-such-release'"),
        ("--with-data", "not a release ID"),
        ("a b;rm", "not a release ID"),
        (project.status()["release"], "is already serving"),
        (42, "must be a release ID"),
    ):
        body = json.dumps({"confirm": "test", "to": to}).encode()
        reply = request(port, "POST", "/api/rollback", body, headers)
        assert reply.status == 400, (to, reply.body)
        assert message in str(reply.json()["error"]), reply.body
    preview = request(port, "GET", "/api/rollback/preview?to=no-such-release", headers={"Cookie": cookie}).json()
    assert preview["possible"] is False and "no successful release matches" in str(preview["reason"])
    assert [record["operation"] for record in project.history()] == ["deploy"]
    assert not list((project.directory / ".lockstep").rglob("dashboard-rollback-*.log"))


def test_documents_show_the_environment_without_secrets(deployed: tuple[NotesProject, int]) -> None:
    """Status, timeline, snapshots and the rollback preview match `lockstep status`; no secret in any."""
    project, port = deployed
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status = project.status()
    environment = request(port, "GET", "/api/environment", headers=headers)
    assert environment.headers["Content-Type"] == "application/json"
    document = environment.json()
    assert document["release"] == status["release"] and document["active_slot"] == status["active_slot"]
    assert document["commit"] == status["commit"]
    assert (document["url"], document["workers_only"]) == (status["url"], False) and status["url"].startswith("http")
    slots = document["slots"]
    assert isinstance(slots, dict)
    deadline = time.monotonic() + 30
    while not slots[status["active_slot"]]["health"] and time.monotonic() < deadline:  # checks run in the background
        time.sleep(0.3)
        slots = request(port, "GET", "/api/environment", headers=headers).json()["slots"]
    assert slots[status["active_slot"]]["health"]["web"]["ok"] is True

    deadline = time.monotonic() + 30
    while True:
        timeline = request(port, "GET", "/api/timeline", headers=headers)
        entries = timeline.json()["entries"]
        assert isinstance(entries, list)
        if any(entry["type"] == "snapshot" for entry in entries) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    deploys = [entry for entry in entries if entry["type"] == "deploy"]
    assert len(deploys) == 1 and deploys[0]["outcome"] == "succeeded"
    assert deploys[0]["release"] == status["release"]
    assert "<script>alert(1)</script>" in deploys[0]["message"]  # data, not markup: the page uses textContent
    assert [entry["outcome"] for entry in entries if entry["type"] == "snapshot"] == ["pre-deploy"]

    snapshots = request(port, "GET", "/api/snapshots", headers=headers).json()["snapshots"]
    assert isinstance(snapshots, list) and len(snapshots) == 1
    assert snapshots[0]["kind"] == "pre-deploy" and snapshots[0]["verified"] != "never"

    preview = request(port, "GET", "/api/rollback/preview?with_data=1", headers=headers).json()
    assert preview["possible"] is False and "first deploy cannot be rolled back" in str(preview["reason"])

    everything = "".join(
        request(port, "GET", path, headers=headers).body
        for path in ("/api/environment", "/api/timeline", "/api/snapshots", "/metrics", "/api/session")
    )
    for secret in (TOKEN, LEAKED, TEST_PASSWORD):
        assert secret not in everything + timeline.body


def test_a_slow_source_never_holds_a_request() -> None:
    """The background cache answers at once with what it has and refreshes in its own thread."""
    release = threading.Event()
    calls: list[int] = []

    def produce() -> int:
        calls.append(1)
        release.wait(10)
        return len(calls)

    value = BackgroundValue(produce, max_age=60.0, name="test-cache")
    started = time.monotonic()
    assert value.get(wait=0.2) is None
    assert time.monotonic() - started < 2.0
    release.set()
    assert value.get(wait=5.0) == 1
    assert value.get() == 1 and len(calls) == 1  # young: no new read
    value.invalidate()
    assert value.get(wait=5.0) == 2


def test_a_dashboard_rollback_is_answered_after_an_agent_restart(tmp_path: Path) -> None:
    """The agent restarts while a rollback it started runs: polling the job answered "no such
    rollback" (404) although the rollback went on and succeeded; it answers the real outcome."""
    (port,) = free_ports(1)
    project = make_project(tmp_path, extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\n')
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.start_agent()
    try:
        first, second, _third = deploy_three_releases(project)
        cookie = session_cookie(login(port))
        csrf = str(request(port, "GET", "/api/session", headers={"Cookie": cookie}).json()["csrf"])
        headers = {"Content-Type": "application/json", "Cookie": cookie, "X-CSRF-Token": csrf}
        started = request(port, "POST", "/api/rollback", json.dumps({"confirm": "test"}).encode(), headers)
        assert started.status == 202, started.body
        job = started.json()["id"]
        stopped = project.lockstep("agent", "stop")  # the apps and the rollback keep running
        assert stopped.returncode == 0, stopped.err
        assert project.agent is not None
        project.agent.wait(timeout=30)
        project.start_agent()
        cookie = session_cookie(login(port))
        deadline = time.monotonic() + 180
        while True:
            reply = request(port, "GET", f"/api/rollback/{job}", headers={"Cookie": cookie})
            assert reply.status == 200, reply.body
            if reply.json()["state"] != "running":
                break
            assert time.monotonic() < deadline, reply.body
            time.sleep(0.5)
        document = reply.json()
        assert document["state"] == "succeeded" and document["exit_code"] == 0, document["output"]
        assert document["finished_at"] is not None and document["output"]
        assert project.status()["release"] == second != first
        assert [record["operation"] for record in project.history()][-1] == "rollback"
        assert request(port, "GET", "/api/rollback/no-such-job", headers={"Cookie": cookie}).status == 404
    finally:
        _stop_everything(project)


WORKERS_ONLY = """
default_environment = "test"

[repository]
url = "local:.lockstep/repository"

[app.components.worker]
command = "sh worker.sh"

[traffic]
listen = "127.0.0.1:{listen}"

[deploy]
watch_seconds = 1

[agent]
dashboard_listen = "127.0.0.1:{dashboard}"
"""


def test_the_dashboard_offers_no_url_for_an_app_of_workers_only(tmp_path: Path) -> None:
    """No component has a port: nothing answers at the proxy's address. `lockstep status` says so
    (`url` null, `workers_only`); the dashboard showed http://LISTEN/ as the app's URL."""
    listen, dashboard = free_ports(2)
    project = make_project(tmp_path)
    (project.directory / "lockstep.toml").write_text(WORKERS_ONLY.format(listen=listen, dashboard=dashboard))
    (project.directory / "worker.sh").write_text("exec sleep 100000\n")
    project.commit("workers only")
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.start_agent()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        before = request(dashboard, "GET", "/api/environment", headers=headers).json()
        assert (before["url"], before["workers_only"]) == (None, True), before  # not deployed yet
        deployed = project.lockstep("deploy")
        assert deployed.returncode == 0, deployed.err

        status = project.status()
        document = request(dashboard, "GET", "/api/environment", headers=headers).json()
        assert document["active_slot"] == status["active_slot"] == "blue", document
        assert (document["url"], document["workers_only"]) == (status["url"], status["workers_only"]) == (None, True)
        script = request(dashboard, "GET", "/static/app.js").body
        assert '"workers only, no URL (no component has a port)"' in script  # what the page shows then
    finally:
        _stop_everything(project)
