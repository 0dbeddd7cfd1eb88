"""Slack, generic webhook and healthchecks channels against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from tests.notify import RecordingServer, Warnings, free_port, make_notifier, sample_event, wait_until

SLACK_URL_SECRET = "T0001/B0002/slacktokenXYZ987"
HMAC_KEY = "hmac-key-that-must-stay-hidden"
DATABASE_PASSWORD = "pg-password-hunter2"
API_TOKEN = "tok_live_5566778899"
NTFY_TOKEN = "tk_ntfy0access0token0never0shown"
ROUTING_KEY = "R0uting0Key0of0the0integration99"


def test_slack_receives_text_and_blocks(tmp_path: Path, server: RecordingServer) -> None:
    """A Slack channel POSTs JSON with a one-line text and blocks carrying the details."""
    warnings = Warnings()
    environ = {"SLACK_WEBHOOK_URL": f"{server.url}/services/{SLACK_URL_SECRET}"}
    notifier = make_notifier(tmp_path, [{"kind": "slack", "url_env": "SLACK_WEBHOOK_URL"}], environ, warnings)
    notifier.notify(sample_event("deploy.failed", error="health check failed on slot blue"))
    notifier.close()

    (request,) = server.wait_for(1)
    assert request.method == "POST"
    assert request.path == f"/services/{SLACK_URL_SECRET}"
    assert request.headers["content-type"] == "application/json"
    message = json.loads(request.body)
    assert message["text"] == ":x: [production] deploy.failed for shop at 3f2c1a9"
    assert message["blocks"][0]["text"]["type"] == "mrkdwn"
    flattened = json.dumps(message["blocks"])
    assert "health check failed on slot blue" in flattened
    assert "d-20261122-0600" in flattened
    assert warnings.lines == []


def test_webhook_body_is_the_event_document_with_a_valid_signature(tmp_path: Path, server: RecordingServer) -> None:
    """The webhook body is the event document, and X-Lockstep-Signature verifies with the shared key."""
    warnings = Warnings()
    channel = {"kind": "webhook", "url": f"{server.url}/hooks/lockstep", "secret_env": "LOCKSTEP_WEBHOOK_SECRET"}
    notifier = make_notifier(tmp_path, [channel], {"LOCKSTEP_WEBHOOK_SECRET": HMAC_KEY}, warnings)
    notifier.notify(sample_event("deploy.succeeded"))
    notifier.close()

    (request,) = server.wait_for(1)
    assert request.path == "/hooks/lockstep"
    expected = "sha256=" + hmac.new(HMAC_KEY.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-lockstep-signature"], expected)
    forged = "sha256=" + hmac.new(b"some-other-key", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-lockstep-signature"] != forged
    assert request.headers["x-lockstep-event"] == "deploy.succeeded"
    document = json.loads(request.body)
    assert document == {
        "kind": "deploy.succeeded",
        "severity": "info",
        "environment": "production",
        "deploy_id": "d-20261122-0600",
        "summary": "deploy.succeeded for shop at 3f2c1a9",
        "at": "2026-11-22T06:00:00Z",
        "details": {"commit": "3f2c1a9", "duration_seconds": 12.5},
    }
    assert warnings.lines == []


def test_webhook_without_secret_sends_no_signature(tmp_path: Path, server: RecordingServer) -> None:
    """Without secret_env the request carries no signature header (rather than one made with an empty key)."""
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [{"kind": "webhook", "url": server.url + "/h"}], {}, warnings)
    notifier.notify(sample_event("snapshot.created"))
    notifier.close()
    (request,) = server.wait_for(1)
    assert "x-lockstep-signature" not in request.headers


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("deploy.started", "/ping/abc-123/start"),
        ("deploy.succeeded", "/ping/abc-123"),
        ("deploy.failed", "/ping/abc-123/fail"),
        ("deploy.rolled_back", "/ping/abc-123/fail"),
    ],
)
def test_healthchecks_pings_the_path_for_each_kind(
    tmp_path: Path, server: RecordingServer, kind: str, path: str
) -> None:
    """deploy.started pings /start, deploy.succeeded the URL itself, failures and rollbacks /fail."""
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [{"kind": "healthchecks", "url": f"{server.url}/ping/abc-123/"}], {}, warnings)
    notifier.notify(sample_event(kind))
    notifier.close()
    (request,) = server.wait_for(1)
    assert request.path == path
    assert request.body.decode() == f"{kind} for shop at 3f2c1a9"


def test_healthchecks_ignores_events_outside_the_mapping(tmp_path: Path, server: RecordingServer) -> None:
    """A snapshot event does not touch the check: its state keeps meaning "the last deploy"."""
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [{"kind": "healthchecks", "url": f"{server.url}/ping/x"}], {}, warnings)
    notifier.notify(sample_event("snapshot.created"))
    notifier.notify(sample_event("deploy.started"))
    notifier.close()
    requests = server.wait_for(1)
    time.sleep(0.2)
    assert [request.path for request in server.received()] == ["/ping/x/start"]
    assert len(requests) == 1


def test_event_filter_sends_only_matching_kinds(tmp_path: Path, server: RecordingServer) -> None:
    """A channel with events = ["deploy.*"] hears deploy events and not snapshot ones."""
    warnings = Warnings()
    channel = {"kind": "webhook", "url": server.url + "/h", "events": ["deploy.*", "*.verification_failed"]}
    notifier = make_notifier(tmp_path, [channel], {}, warnings)
    for kind in ("snapshot.created", "deploy.started", "lock.broken", "snapshot.verification_failed"):
        notifier.notify(sample_event(kind))
    notifier.close()
    server.wait_for(2)
    kinds = [json.loads(request.body)["kind"] for request in server.received()]
    assert kinds == ["deploy.started", "snapshot.verification_failed"]


def test_secrets_in_event_details_never_reach_any_server(tmp_path: Path, server: RecordingServer) -> None:
    """Known secrets and secret-shaped text in an event are redacted in every payload the servers
    receive; the ntfy token and the PagerDuty routing key travel only where they belong (the
    Authorization header, the routing_key field), never in the text taken from the event."""
    warnings = Warnings()
    environ = {
        "SLACK_WEBHOOK_URL": f"{server.url}/slack/{SLACK_URL_SECRET}",
        "LOCKSTEP_WEBHOOK_SECRET": HMAC_KEY,
        "SHOP_DATABASE_PASSWORD": DATABASE_PASSWORD,
        "GITHUB_TOKEN": API_TOKEN,
        "NTFY_ACCESS": NTFY_TOKEN,  # names that do not look secret: only secret_env makes them known
        "PD_INTEGRATION": ROUTING_KEY,
    }
    channels = [
        {"kind": "slack", "url_env": "SLACK_WEBHOOK_URL"},
        {"kind": "webhook", "url": server.url + "/hook", "secret_env": "LOCKSTEP_WEBHOOK_SECRET"},
        {"kind": "healthchecks", "url": server.url + "/ping/uuid"},
        {"kind": "ntfy", "url": server.url + "/ntfy-topic", "secret_env": "NTFY_ACCESS"},
        {"kind": "pagerduty", "url": server.url + "/v2/enqueue", "secret_env": "PD_INTEGRATION"},
    ]
    notifier = make_notifier(tmp_path, channels, environ, warnings)
    event = sample_event(
        "deploy.failed",
        error=f"psql: connection to postgresql://shop:{DATABASE_PASSWORD}@db:5432/shop failed",
        hook_output=f"curl -H 'Authorization: Bearer {API_TOKEN}' https://api\nSLACK={SLACK_URL_SECRET}",
        signing_key=HMAC_KEY,
        nested={"items": [f"LOCKSTEP_PASSWORD=repo-pass-{DATABASE_PASSWORD}", f"secret is {HMAC_KEY}"]},
        publish_output=f"ntfy publish --token {NTFY_TOKEN}; pd-send -k {ROUTING_KEY}",
    )
    event = type(event)(
        kind=event.kind,
        environment=event.environment,
        summary=f"deploy failed: token {API_TOKEN} rejected",
        details=event.details,
        at=event.at,
        deploy_id=event.deploy_id,
    )
    notifier.notify(event)
    notifier.close()
    requests = server.wait_for(5)
    by_path = {request.path: request for request in requests}
    ntfy_request = by_path["/ntfy-topic"]
    assert ntfy_request.headers.pop("authorization") == f"Bearer {NTFY_TOKEN}"
    pagerduty_event = json.loads(by_path["/v2/enqueue"].body)
    assert pagerduty_event.pop("routing_key") == ROUTING_KEY
    for request in requests:
        body = json.dumps(pagerduty_event) if request.path == "/v2/enqueue" else request.body.decode("utf-8")
        payload = body + json.dumps(request.headers)
        for secret in (DATABASE_PASSWORD, API_TOKEN, HMAC_KEY, SLACK_URL_SECRET, "repo-pass", NTFY_TOKEN, ROUTING_KEY):
            assert secret not in payload, f"{secret!r} reached {request.path}"
        assert "***" in body, request.path
    assert warnings.lines == []


def test_unreachable_webhook_returns_at_once_and_warns_after_retries(tmp_path: Path) -> None:
    """A refused port: notify returns immediately, nothing raises, one warning names the channel after 3 tries."""
    warnings = Warnings()
    port = free_port()  # nothing listens there: connections are refused
    channel = {"kind": "webhook", "name": "ops-hook", "url": f"http://127.0.0.1:{port}/h", "secret_env": "HOOK_KEY"}
    notifier = make_notifier(tmp_path, [channel], {"HOOK_KEY": HMAC_KEY}, warnings, retry_delay_seconds=0.3)
    started = time.monotonic()
    notifier.notify(sample_event("deploy.failed", signing_key=HMAC_KEY))
    assert time.monotonic() - started < 1.0  # returns at once; generous for a loaded machine
    (line,) = warnings.wait_for(1)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.3 + 0.6 - 0.05  # two back-off waits: 0.3 s then 0.6 s
    assert "ops-hook" in line
    assert "webhook" in line
    assert "3 attempts" in line
    assert "refused" in line.lower()
    assert "deploy.failed not sent" in line
    assert HMAC_KEY not in line
    notifier.close(timeout=5)
    assert len(warnings.lines) == 1


def test_server_error_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    """Two HTTP 503 answers then 200: the event arrives on the third attempt and no warning is printed."""
    recording = RecordingServer(statuses=[503, 503])
    try:
        warnings = Warnings()
        notifier = make_notifier(tmp_path, [{"kind": "webhook", "url": recording.url + "/h"}], {}, warnings)
        notifier.notify(sample_event("deploy.succeeded"))
        notifier.close(timeout=30)
        requests = recording.wait_for(3)
        assert len(requests) == 3
        assert len({request.headers["x-lockstep-delivery"] for request in requests}) == 1
        assert warnings.lines == []
    finally:
        recording.stop()


def test_client_error_is_not_retried(tmp_path: Path) -> None:
    """HTTP 404 means the URL is wrong: one attempt, then a warning that says 404."""
    recording = RecordingServer(statuses=[404])
    try:
        warnings = Warnings()
        notifier = make_notifier(tmp_path, [{"kind": "webhook", "url": recording.url + "/wrong"}], {}, warnings)
        notifier.notify(sample_event("deploy.succeeded"))
        notifier.close(timeout=30)
        assert len(recording.received()) == 1
        (line,) = warnings.wait_for(1)
        assert "HTTP 404" in line
        assert "1 attempt" in line
    finally:
        recording.stop()


def test_slow_server_times_out_and_close_does_not_hang(tmp_path: Path) -> None:
    """A server slower than the timeout: close(timeout) returns on time and says what was not sent."""
    recording = RecordingServer(delay_seconds=5)
    try:
        warnings = Warnings()
        notifier = make_notifier(
            tmp_path,
            [{"kind": "webhook", "name": "slow", "url": recording.url + "/h"}],
            {},
            warnings,
            timeout_seconds=3,
        )
        notifier.notify(sample_event("deploy.succeeded"))
        notifier.notify(sample_event("deploy.failed"))
        recording.wait_for(1)
        started = time.monotonic()
        notifier.close(timeout=1)
        assert time.monotonic() - started < 2.5
        (line,) = warnings.wait_for(1)
        assert "slow" in line
        assert "2 events not sent within 1 s" in line
        time.sleep(0.5)
        assert len(warnings.lines) == 1
    finally:
        recording.stop()


def test_missing_url_variable_warns_with_its_name(tmp_path: Path) -> None:
    """A Slack channel whose url_env is unset warns once per event, naming the variable, without retrying."""
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [{"kind": "slack", "url_env": "SLACK_WEBHOOK_URL"}], {}, warnings)
    notifier.notify(sample_event("deploy.failed"))
    notifier.close()
    (line,) = warnings.wait_for(1)
    assert "SLACK_WEBHOOK_URL" in line
    assert "slack#1" in line


def test_notify_after_close_is_ignored(tmp_path: Path, server: RecordingServer) -> None:
    """Events after close() are dropped quietly instead of starting threads that nobody waits for."""
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [{"kind": "webhook", "url": server.url + "/h"}], {}, warnings)
    notifier.close()
    notifier.notify(sample_event("deploy.failed"))
    time.sleep(0.2)
    assert server.received() == []
    assert wait_until(lambda: warnings.lines == [], timeout=0.1)


def test_a_redirect_is_a_failure_that_says_so_and_is_not_followed(tmp_path: Path) -> None:
    """A 302 used to be followed as a GET without the body, which the target answered 200: the event
    was lost and reported delivered, and the signature went along. Now it is one warning naming
    where the URL points (host only), and nothing is sent there."""
    target = RecordingServer()
    redirecting = RecordingServer(statuses=[302, 302], location=f"{target.url}/elsewhere/secret-path-123")
    try:
        warnings = Warnings()
        channels = [
            {"kind": "webhook", "url": redirecting.url + "/hook", "secret_env": "HOOK_KEY"},
            {"kind": "healthchecks", "url": redirecting.url + "/ping/uuid"},
        ]
        notifier = make_notifier(tmp_path, channels, {"HOOK_KEY": HMAC_KEY}, warnings)
        notifier.notify(sample_event("deploy.started"))
        lines = warnings.wait_for(2, timeout=30)
        notifier.close(timeout=5)
        assert len(redirecting.received()) == 2, "a redirect is not retried"
        assert target.received() == []
        for line in lines:
            assert "HTTP 302" in line
            assert f"redirects to {target.url}" in line
            assert "secret-path-123" not in line
            assert "1 attempt" in line
    finally:
        target.stop()
        redirecting.stop()


def test_a_server_that_answers_one_byte_at_a_time_is_given_up_on_within_the_timeout(tmp_path: Path) -> None:
    """timeout_seconds bounds the whole attempt: a tarpit that keeps sending a byte every 0.2 s
    (so no single read ever times out) used to hold the channel for as long as it liked."""
    tarpit = RecordingServer(trickle_seconds=60)
    try:
        warnings = Warnings()
        notifier = make_notifier(
            tmp_path, [{"kind": "webhook", "url": tarpit.url + "/h"}], {}, warnings, timeout_seconds=1, attempts=2
        )
        started = time.monotonic()
        notifier.notify(sample_event("deploy.succeeded"))
        (line,) = warnings.wait_for(1, timeout=20)
        assert time.monotonic() - started < 10
        assert "2 attempts" in line and "within 1 s" in line
        notifier.close(timeout=1)
    finally:
        tarpit.stop()


def test_a_ping_url_with_credentials_sends_basic_auth(tmp_path: Path, server: RecordingServer) -> None:
    """url_env may hold `http://user:password@host/...` (curl pings it so): urllib took the
    credentials for the host name and the channel failed. They go as basic auth now, the request
    line carries none, and a refused ping's warning shows no part of them."""
    import base64

    password = "ping-Pa55:w0rd@home"  # ":" and "@" percent-encoded in the URL, decoded when sent
    with_credentials = server.url.replace("http://", "http://hc-user:ping-Pa55%3Aw0rd%40home@") + "/ping/abc-123"
    warnings = Warnings()
    notifier = make_notifier(
        tmp_path, [{"kind": "healthchecks", "url_env": "PING_URL"}], {"PING_URL": with_credentials}, warnings
    )
    server.statuses = [200, 401]
    notifier.notify(sample_event("deploy.started"))
    notifier.notify(sample_event("deploy.succeeded"))
    notifier.close()
    first, second = server.wait_for(2)
    expected = "Basic " + base64.b64encode(f"hc-user:{password}".encode()).decode()
    assert (first.path, first.headers["authorization"]) == ("/ping/abc-123/start", expected)
    assert second.headers["authorization"] == expected
    assert len(warnings.lines) == 1 and "HTTP 401" in warnings.lines[0], warnings.lines
    assert "Pa55" not in warnings.lines[0] and "hc-user" not in warnings.lines[0]
