"""The dashboard in headless Chromium (from apt), driven over the Chrome DevTools Protocol:
log in, see the active release, watch the timeline follow a deploy, and roll back through the page."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import require_binary
from tests.deploy.conftest import NotesProject, _stop_everything, free_ports, make_project

TOKEN = "browser-test-token-0c4b7d2f"
XSS_MESSAGE = '<img src=x onerror="window.__pwned=1">first release'


class Chromium:
    """One headless Chromium page, driven synchronously; the protocol runs on a private event loop."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.log = profile.parent / "chromium.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its helper processes go with it on close()
            )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cdp", daemon=True)
        self.thread.start()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._run(self._connect(self._page_socket_url()))
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _page_socket_url(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            if port_file.exists() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                    targets = json.loads(response.read())
                pages = [target for target in targets if target.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.2)
        raise AssertionError("chromium did not open its DevTools port")

    def _run(self, coroutine: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self, url: str) -> None:
        self.session = aiohttp.ClientSession()
        self.socket = await self.session.ws_connect(url, max_msg_size=0)
        self.loop.create_task(self._read())

    async def _read(self) -> None:
        assert self.socket is not None
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            document = json.loads(message.data)
            future = self.pending.pop(document.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(document)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.socket is not None
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.pending[self.next_id] = future
        await self.socket.send_json({"id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(future, 60)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self._run(self._call(method, params))
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll `expression` until it is truthy (pages render asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(AssertionError):  # a navigation may destroy the context mid-call
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                body = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out waiting for {expression}; the page shows:\n{body}")
            time.sleep(0.2)

    def navigate(self, url: str) -> None:
        """Load `url` and wait until the new document is complete (wherever redirects led)."""
        # Mark the old document so a check cannot pass on it; about:blank's window is reused, skip it.
        self.evaluate("if (location.href !== 'about:blank') { window.__leaving = true; }")
        self.call("Page.navigate", url=url)
        self.wait_for("!window.__leaving && document.readyState === 'complete'")

    def type_into(self, element_id: str, text: str) -> None:
        """Focus a field and type, as a keyboard would (input events included)."""
        self.evaluate(f"document.getElementById({json.dumps(element_id)}).focus()")
        self.call("Input.insertText", text=text)

    def click(self, element_id: str) -> None:
        self.evaluate(f"document.getElementById({json.dumps(element_id)}).click()")

    def text(self, element_id: str) -> str:
        return str(self.evaluate(f"document.getElementById({json.dumps(element_id)}).textContent"))

    def close(self) -> None:
        async def disconnect() -> None:
            if self.socket is not None:
                await self.socket.close()
            if self.session is not None:
                await self.session.close()

        with contextlib.suppress(Exception):
            self._run(disconnect(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.loop.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    binary = require_binary("chromium", "apt-get install chromium chromium-driver")
    chromium = Chromium(binary, tmp_path / "chromium-profile")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def dashboard_project(tmp_path: Path) -> Iterator[tuple[NotesProject, str]]:
    """The notes app with its agent serving the dashboard; yields the project and the dashboard URL."""
    (port,) = free_ports(1)
    project = make_project(tmp_path, extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\n')
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.start_agent()
    try:
        yield project, f"http://127.0.0.1:{port}/"
    finally:
        _stop_everything(project)


def log_in(browser: Chromium, url: str) -> None:
    browser.navigate(url + "login")
    browser.wait_for("location.pathname === '/login' && !!document.getElementById('token')")
    browser.type_into("token", TOKEN)
    browser.click("login-button")
    browser.wait_for(f"location.href === {json.dumps(url)} && !!document.getElementById('timeline-rows')")


def test_login_shows_the_active_release_and_the_timeline_follows_a_deploy(
    browser: Chromium, dashboard_project: tuple[NotesProject, str]
) -> None:
    """A wrong token is refused on the page; the right one shows the release; a new deploy appears."""
    project, url = dashboard_project
    deployed = project.lockstep("deploy", "-m", XSS_MESSAGE)
    assert deployed.returncode == 0, deployed.err
    first = project.status()["release"]

    browser.navigate(url)  # no session: sent to the login page
    browser.wait_for("location.pathname === '/login' && !!document.getElementById('token')")
    browser.type_into("token", "a-wrong-token")
    browser.click("login-button")
    browser.wait_for("document.body.innerText.includes('Wrong token')")
    assert "LOCKSTEP_DASHBOARD_TOKEN" in browser.evaluate("document.body.innerText")

    log_in(browser, url)
    browser.wait_for(f"document.getElementById('active-release').textContent === {json.dumps(first)}")
    assert browser.text("environment-name") == "test"
    browser.wait_for("document.getElementById('active-health').textContent.includes('web: healthy')")

    project.apply("v2", "notes 2.0.0")
    deployed = project.lockstep("deploy", "-m", "second release")
    assert deployed.returncode == 0, deployed.err
    second = project.status()["release"]
    assert second != first
    # The page refreshes on its own every few seconds: no reload.
    browser.wait_for("document.querySelectorAll('#timeline-rows tr[data-type=deploy]').length === 2")
    browser.wait_for(f"document.getElementById('active-release').textContent === {json.dumps(second)}")
    timeline = browser.text("timeline-rows")
    assert "second release" in timeline and second in timeline
    # The message with markup is shown as text; nothing in it ran or became an element.
    assert XSS_MESSAGE in timeline
    assert browser.evaluate("document.querySelectorAll('#timeline-rows img').length") == 0
    assert browser.evaluate("window.__pwned === undefined") is True
    browser.wait_for("document.querySelectorAll('#snapshot-rows tr').length === 2")
    assert TOKEN not in browser.evaluate("document.documentElement.outerHTML")


@pytest.mark.slow
def test_a_confirmed_rollback_through_the_page(browser: Chromium, dashboard_project: tuple[NotesProject, str]) -> None:
    """The page lets the user pick an earlier release than the previous one, shows what a data
    restore to it discards, needs the environment's name, then rolls back to that release."""
    project, url = dashboard_project
    assert project.lockstep("deploy").returncode == 0
    first = project.status()["release"]
    project.add_note("from v1")
    project.apply("v2", "notes 2.0.0")
    assert project.lockstep("deploy").returncode == 0
    second = project.status()["release"]
    (project.directory / "CHANGES.txt").write_text("a release without a migration\n")
    project.commit("notes 2.0.0, a second time")
    assert project.lockstep("deploy").returncode == 0
    third = project.status()["release"]
    project.add_note("from v2 #lost")
    assert project.version() == "2.0.0" and len({first, second, third}) == 3

    log_in(browser, url)
    # The list offers both earlier releases; without a choice the rollback goes to the previous one.
    browser.wait_for("document.querySelectorAll('#rollback-to option').length === 3")
    assert second in browser.text("rollback-to") and first in browser.text("rollback-to")
    browser.click("rollback-preview-button")
    browser.wait_for("!document.getElementById('rollback-preview').hidden")
    assert second in browser.text("rollback-target")
    assert browser.evaluate("document.getElementById('rollback-impossible').hidden") is True

    # The first release, code only, is refused up front: v1 on v2's schema would damage data.
    browser.evaluate(
        f"(() => {{ const s = document.getElementById('rollback-to'); s.value = {json.dumps(first)}; "
        "s.dispatchEvent(new Event('change')); return true; })()"
    )
    assert browser.evaluate("document.getElementById('rollback-preview').hidden") is True
    browser.click("rollback-preview-button")
    browser.wait_for("!document.getElementById('rollback-impossible').hidden")
    assert "migration version" in browser.text("rollback-impossible")
    assert browser.evaluate("document.getElementById('rollback-button').disabled") is True

    browser.click("rollback-with-data")
    browser.click("rollback-preview-button")
    browser.wait_for("!document.getElementById('rollback-discarded-block').hidden")
    discarded = browser.text("rollback-discarded")
    assert "table notes: 1 row added (lost)" in discarded, discarded
    assert first in browser.text("rollback-target")
    browser.type_into("rollback-confirm", "tes")
    assert browser.evaluate("document.getElementById('rollback-button').disabled") is True
    assert project.version() == "2.0.0"  # nothing happens before the name is typed
    browser.type_into("rollback-confirm", "t")
    browser.wait_for("!document.getElementById('rollback-button').disabled")
    browser.click("rollback-button")

    browser.wait_for("['succeeded', 'failed'].includes(document.getElementById('rollback-state').textContent)", 240)
    assert browser.text("rollback-state") == "succeeded", browser.text("rollback-output")
    status = project.status()
    assert status["release"] == first
    assert project.version() == "1.0.0"
    assert project.notes() == ["from v1"]
    last = project.history()[-1]
    assert last["operation"] == "rollback" and last["data_restored"] is True
    browser.wait_for(f"document.getElementById('active-release').textContent === {json.dumps(first)}")
    browser.wait_for("document.querySelectorAll('#timeline-rows tr[data-type=rollback]').length === 1")
