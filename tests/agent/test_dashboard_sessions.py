"""Dashboard sessions live in the agent's SQLite state: they survive a restart of the agent, expire,
and die with a changed token; the state file holds no usable cookie."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lockstep.agent.dashboard import auth
from lockstep.agent.dashboard.auth import Gatekeeper
from lockstep.agent.state import AgentState
from tests.agent.test_dashboard import TOKEN, login, request, session_cookie
from tests.deploy.conftest import _stop_everything, free_ports, make_project


def test_a_session_outlives_the_gatekeeper_and_the_connection(tmp_path: Path) -> None:
    """A new Gatekeeper on the same state file (a restarted agent) knows the session and its CSRF token."""
    path = tmp_path / "agent.db"
    state = AgentState(path)
    session = Gatekeeper(TOKEN, state).open_session()
    state.close()

    reopened = AgentState(path)
    try:
        found = Gatekeeper(TOKEN, reopened).session(session.identifier)
        assert found is not None and found.csrf_token == session.csrf_token
        assert Gatekeeper(TOKEN, reopened).session("forged") is None
        assert session.identifier.encode() not in path.read_bytes() + _wal(path)
    finally:
        reopened.close()


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_a_changed_token_invalidates_every_session(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "agent.db")
    try:
        session = Gatekeeper(TOKEN, state).open_session()
        assert Gatekeeper("another-token", state).session(session.identifier) is None
        assert Gatekeeper(TOKEN, state).session(session.identifier) is not None
    finally:
        state.close()


def test_an_expired_session_is_refused_and_a_closed_one_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = AgentState(tmp_path / "agent.db")
    try:
        gatekeeper = Gatekeeper(TOKEN, state)
        monkeypatch.setattr(auth, "SESSION_LIFETIME", 0.05)
        short = gatekeeper.open_session()
        monkeypatch.setattr(auth, "SESSION_LIFETIME", 3600.0)
        time.sleep(0.1)
        assert gatekeeper.session(short.identifier) is None
        lasting = gatekeeper.open_session()  # opening a session also forgets the expired ones
        assert state.dashboard_session_expiry(gatekeeper._keyed("session", short.identifier)) is None
        assert gatekeeper.session(lasting.identifier) is not None
        gatekeeper.close_session(lasting.identifier)
        assert gatekeeper.session(lasting.identifier) is None
    finally:
        state.close()


def test_restarting_the_agent_keeps_the_dashboard_session(tmp_path: Path) -> None:
    """Log in, restart the agent: the cookie still opens the API; restarted with a new token, it does not."""
    (port,) = free_ports(1)
    project = make_project(tmp_path, extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\n')
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.start_agent()
    try:
        cookie = session_cookie(login(port))
        before = request(port, "GET", "/api/session", headers={"Cookie": cookie})
        assert before.status == 200

        for token, expected in ((TOKEN, 200), ("a-new-dashboard-token-5e1f", 401)):
            assert project.lockstep("agent", "stop", timeout=60).returncode == 0
            assert project.agent is not None
            project.agent.wait(timeout=30)
            project.env["LOCKSTEP_DASHBOARD_TOKEN"] = token
            project.start_agent()
            deadline = time.monotonic() + 30
            while True:  # the dashboard thread may start a moment after the agent answers
                try:
                    reply = request(port, "GET", "/api/session", headers={"Cookie": cookie})
                    break
                except ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert reply.status == expected, reply.body
            if expected == 200:
                assert reply.json()["csrf"] == before.json()["csrf"]
    finally:
        _stop_everything(project)
