"""The email channel against a real SMTP server on loopback (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lockstep.notify.config import NotificationsConfig
from lockstep.notify.dispatcher import Notifier
from tests.conftest import missing
from tests.notify import Warnings, free_port, sample_event, self_signed_certificate, server_tls_context, wait_until

SMTP_USER = "lockstep"
SMTP_PASSWORD = "smtp-pass-0f9e8d7c"


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    content: bytes
    over_tls: bool
    login: str | None


@dataclass
class SmtpServer:
    port: int
    ca_file: Path
    mails: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[ReceivedMail]:
        with self.lock:
            return list(self.mails)


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """aiosmtpd on 127.0.0.1 that requires STARTTLS and AUTH as lockstep/SMTP_PASSWORD."""
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword
    except ImportError:
        missing("aiosmtpd is not installed (pip install aiosmtpd)")
        raise
    certificate, key = self_signed_certificate(tmp_path)
    server = SmtpServer(port=0, ca_file=certificate)

    class Handler:
        async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
            login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
            with server.lock:
                server.mails.append(
                    ReceivedMail(
                        envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.ssl is not None, login
                    )
                )
            return "250 OK"

    def authenticate(smtp: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        valid = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == SMTP_USER.encode()
            and auth_data.password == SMTP_PASSWORD.encode()
        )
        return AuthResult(success=valid, handled=False, auth_data=auth_data if valid else None)

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_tls_context(certificate, key),
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    server.port = controller.port
    try:
        yield server
    finally:
        controller.stop()


def email_notifier(tmp_path: Path, server: SmtpServer, password: str, warnings: Warnings, **extra: Any) -> Notifier:
    channel = {
        "kind": "email",
        "name": "ops-mail",
        "host": "127.0.0.1",
        "port": server.port,
        "sender": "lockstep@example.com",
        "recipients": ["ops@example.com", "oncall@example.com"],
        "username": SMTP_USER,
        "password_env": "SMTP_PASSWORD",
        "ca_file": str(server.ca_file),
        **extra,
    }
    config = NotificationsConfig.model_validate(
        {"channels": [channel], "timeout_seconds": 10, "retry_delay_seconds": 0.05}
    )
    return Notifier(config, tmp_path, "production", warn=warnings, environ={"SMTP_PASSWORD": password})


def test_email_arrives_over_starttls_with_auth(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """A real email reaches the server after STARTTLS and AUTH, with the summary as subject and the facts."""
    warnings = Warnings()
    notifier = email_notifier(tmp_path, smtp_server, SMTP_PASSWORD, warnings)
    notifier.notify(
        sample_event(
            "deploy.rolled_back",
            reason="health gate failed",
            error=f"login with {SMTP_PASSWORD} to mysql://app:db-pass-777@db/shop refused",
        )
    )
    notifier.close(timeout=30)
    assert wait_until(lambda: len(smtp_server.received()) == 1, timeout=30), warnings.lines
    (mail,) = smtp_server.received()
    assert mail.over_tls
    assert mail.login == SMTP_USER
    assert mail.sender == "lockstep@example.com"
    assert mail.recipients == ["ops@example.com", "oncall@example.com"]
    message = email.message_from_bytes(mail.content, policy=email.policy.default)
    assert message["Subject"] == "lockstep [production] deploy.rolled_back for shop at 3f2c1a9"
    assert message["X-Lockstep-Event"] == "deploy.rolled_back"
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "health gate failed" in text
    assert "d-20261122-0600" in text
    assert SMTP_PASSWORD.encode() not in mail.content
    assert b"db-pass-777" not in mail.content
    assert "mysql://app:***@db/shop" in text
    assert warnings.lines == []


def test_email_password_from_file(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """password_file (relative to the base directory) works like password_env."""
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD + "\n")
    warnings = Warnings()
    channel = {
        "kind": "email",
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "sender": "lockstep@example.com",
        "recipients": ["ops@example.com"],
        "username": SMTP_USER,
        "password_file": "smtp-password",
        "ca_file": str(smtp_server.ca_file),
    }
    notifier = Notifier(NotificationsConfig.model_validate({"channels": [channel]}), tmp_path, None, warn=warnings)
    notifier.notify(sample_event("snapshot.created"))
    notifier.close(timeout=30)
    assert wait_until(lambda: len(smtp_server.received()) == 1, timeout=30), warnings.lines


def test_wrong_smtp_password_warns_without_the_password(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """A refused login: one warning naming the channel and the refusal, never the password; no retries."""
    warnings = Warnings()
    wrong = "wrong-password-31415"
    notifier = email_notifier(tmp_path, smtp_server, wrong, warnings)
    notifier.notify(sample_event("deploy.failed"))
    notifier.close(timeout=30)
    (line,) = warnings.wait_for(1)
    assert "ops-mail" in line
    assert "refused the login" in line
    assert "1 attempt" in line
    assert wrong not in line
    assert SMTP_PASSWORD not in line
    assert smtp_server.received() == []


def test_untrusted_certificate_is_refused(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Without ca_file the self-signed certificate is not trusted: nothing is sent, the warning says to set ca_file."""
    warnings = Warnings()
    notifier = email_notifier(tmp_path, smtp_server, SMTP_PASSWORD, warnings, ca_file=None)
    notifier.notify(sample_event("deploy.failed"))
    notifier.close(timeout=30)
    (line,) = warnings.wait_for(1)
    assert "ca_file" in line
    assert SMTP_PASSWORD not in line
    assert smtp_server.received() == []
