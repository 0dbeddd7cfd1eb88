"""The ntfy channel against a real HTTP server on loopback: the exact request ntfy documents."""

from __future__ import annotations

import email.header
from pathlib import Path

from tests.notify import RecordingServer, Warnings, make_notifier, sample_event

NTFY_TOKEN = "tk_ntfy0access0token0never0shown"


def test_a_failure_is_published_with_title_priority_tags_and_the_token(tmp_path: Path, server: RecordingServer) -> None:
    """An automatic rollback: POST to the topic with the summary and details as text, a title naming
    project, environment and what happened, priority high, an emoji tag and the bearer token."""
    warnings = Warnings()
    channel = {"kind": "ntfy", "url": f"{server.url}/shop-alerts", "secret_env": "NTFY_TOKEN"}
    notifier = make_notifier(tmp_path, [channel], {"NTFY_TOKEN": NTFY_TOKEN}, warnings, project="shop")
    notifier.notify(sample_event("deploy.rolled_back", error="health check failed on slot blue"))
    notifier.close()

    (request,) = server.wait_for(1)
    assert (request.method, request.path) == ("POST", "/shop-alerts")
    assert request.headers["title"] == "shop (production): deploy rolled back"
    assert request.headers["priority"] == "high"
    assert request.headers["tags"] == "x,deploy.rolled_back,production"
    assert request.headers["authorization"] == f"Bearer {NTFY_TOKEN}"
    assert request.headers["content-type"] == "text/plain; charset=utf-8"
    assert request.body.decode() == (
        "deploy.rolled_back for shop at 3f2c1a9\n"
        "\n"
        "deploy: d-20261122-0600\n"
        "commit: 3f2c1a9\n"
        "duration_seconds: 12.5\n"
        "error: health check failed on slot blue"
    )
    assert warnings.lines == []


def test_priority_follows_how_bad_the_event_is(tmp_path: Path, server: RecordingServer) -> None:
    """urgent when a deploy or rollback could not undo everything, high for the other failures
    (automatic rollback, failed backup, failed verification), default for the rest; without
    secret_env no Authorization header is sent."""
    expected = {
        "deploy.failed": ("urgent", "x"),
        "rollback.failed": ("urgent", "x"),
        "deploy.rolled_back": ("high", "x"),
        "backup.failed": ("high", "x"),
        "snapshot.verification_failed": ("high", "x"),
        "snapshot.rpo_exceeded": ("default", "warning"),
        "deploy.succeeded": ("default", "white_check_mark"),
        "snapshot.created": ("default", "white_check_mark"),
    }
    warnings = Warnings()
    notifier = make_notifier(tmp_path, [{"kind": "ntfy", "url": f"{server.url}/topic"}], {}, warnings)
    for kind in expected:
        notifier.notify(sample_event(kind))
    notifier.close()
    requests = server.wait_for(len(expected))
    received = {
        request.headers["tags"].split(",")[1]: (request.headers["priority"], request.headers["tags"].split(",")[0])
        for request in requests
    }
    assert received == expected
    assert all("authorization" not in request.headers for request in requests)
    assert requests[0].headers["title"] == f"{tmp_path.name} (production): deploy failed"  # project by default


def test_a_title_that_is_not_ascii_arrives_rfc2047_encoded(tmp_path: Path, server: RecordingServer) -> None:
    """HTTP headers are Latin-1: "produção" would arrive as Latin-1 bytes that ntfy reads as UTF-8
    (mojibake), and a name outside Latin-1 would make urllib raise. ntfy decodes RFC 2047 encoded
    words, so the title is sent as one and arrives as written."""
    warnings = Warnings()
    notifier = make_notifier(
        tmp_path, [{"kind": "ntfy", "url": f"{server.url}/t"}], {}, warnings, project="loja", environment="produção"
    )
    event = sample_event("backup.failed")
    notifier.notify(type(event)(kind=event.kind, environment=None, summary="backup failed: disk full"))
    notifier.close()
    (request,) = server.wait_for(1)
    (decoded, charset), *_ = email.header.decode_header(request.headers["title"])
    assert isinstance(decoded, bytes) and charset == "utf-8"
    assert decoded.decode() == "loja (produção): backup failed"
    assert request.headers["priority"] == "high"
    assert warnings.lines == []


def test_an_unset_token_variable_warns_by_name_and_sends_nothing(tmp_path: Path, server: RecordingServer) -> None:
    """secret_env naming an unset variable: one warning naming it, no unauthenticated request."""
    warnings = Warnings()
    channel = {"kind": "ntfy", "url": f"{server.url}/t", "secret_env": "NTFY_TOKEN"}
    notifier = make_notifier(tmp_path, [channel], {}, warnings)
    notifier.notify(sample_event("deploy.failed"))
    notifier.close()
    (line,) = warnings.wait_for(1)
    assert "NTFY_TOKEN (secret_env) is not set" in line and "1 attempt" in line
    assert server.received() == []


def test_a_refused_token_warns_once_without_showing_it(tmp_path: Path) -> None:
    """HTTP 403 (a token without write access) is not retried; the warning says 403 and not the token.
    A 503 is retried like the other channels' and then arrives."""
    refusing = RecordingServer(statuses=[403, 503])
    try:
        warnings = Warnings()
        channel = {"kind": "ntfy", "name": "phone", "url": f"{refusing.url}/t", "secret_env": "NTFY_TOKEN"}
        notifier = make_notifier(tmp_path, [channel], {"NTFY_TOKEN": NTFY_TOKEN}, warnings)
        notifier.notify(sample_event("deploy.failed", note=f"token {NTFY_TOKEN}"))
        notifier.notify(sample_event("deploy.succeeded"))
        notifier.close(timeout=30)
        first, second, third = refusing.wait_for(3)
        assert first.body.startswith(b"deploy.failed") and b"***" in first.body
        assert NTFY_TOKEN.encode() not in first.body
        assert second.body == third.body and second.body.startswith(b"deploy.succeeded")
        (line,) = warnings.wait_for(1)
        assert "phone" in line and "HTTP 403" in line and "1 attempt" in line
        assert NTFY_TOKEN not in line
    finally:
        refusing.stop()


def test_a_url_with_a_login_and_a_token_is_refused_without_showing_either(
    tmp_path: Path, server: RecordingServer
) -> None:
    """url_env holding `https://user:password@host/topic` and secret_env naming a token: the request
    would carry only one of them (basic auth replaced the bearer token), so nothing is sent and the
    warning says to keep one, showing neither."""
    warnings = Warnings()
    url = server.url.replace("http://", "http://phil:ntfy-Pa55word@") + "/t"
    channel = {"kind": "ntfy", "url_env": "NTFY_URL", "secret_env": "NTFY_TOKEN"}
    notifier = make_notifier(tmp_path, [channel], {"NTFY_URL": url, "NTFY_TOKEN": NTFY_TOKEN}, warnings)
    notifier.notify(sample_event("deploy.failed"))
    notifier.close()
    (line,) = warnings.wait_for(1)
    assert "NTFY_URL (url_env) carries login credentials" in line and "remove one of the two" in line
    assert "Pa55word" not in line and NTFY_TOKEN not in line
    assert server.received() == []
