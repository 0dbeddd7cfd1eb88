"""Email over SMTP: STARTTLS with a verified certificate before AUTH or any content, then one message.

The password comes from password_env or password_file, is registered with the redactor as soon as
it is read, and smtplib's error texts are reduced to the server's code and message, which never
echo it.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig


def compose(document: Mapping[str, Any], sender: str, recipients: list[str]) -> EmailMessage:
    """The email for an event document: the summary as subject, the facts as a plain-text body."""
    environment = document.get("environment")
    where = f"[{environment}] " if environment else ""
    summary = " ".join(str(document.get("summary", "")).split())  # no newlines in a header
    message = EmailMessage()
    message["Subject"] = f"lockstep {where}{summary}"[:200]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="lockstep")
    message["X-Lockstep-Event"] = str(document.get("kind", ""))
    lines = [
        str(document.get("summary", "")),
        "",
        f"event:       {document.get('kind')}",
        f"environment: {environment or '-'}",
        f"deploy:      {document.get('deploy_id') or '-'}",
        f"at:          {document.get('at')}",
    ]
    details = document.get("details") or {}
    if details:
        lines += ["", "details:", json.dumps(details, indent=2, ensure_ascii=False, sort_keys=True)]
    message.set_content("\n".join(lines) + "\n")
    return message


class EmailChannel:
    """Sends one email per event through an SMTP server."""

    def __init__(
        self,
        config: ChannelConfig,
        password: str | None,
        password_problem: str | None,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._config = config
        self._password = password
        self._password_problem = password_problem
        self._ssl_context = ssl_context

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Connect, STARTTLS, log in when configured, send, quit."""
        config = self._config
        if self._password_problem is not None:
            raise DeliveryError(self._password_problem, permanent=True)
        assert config.host is not None and config.sender is not None
        message = compose(document, config.sender, config.recipients)
        try:
            with smtplib.SMTP(config.host, config.port, timeout=timeout) as connection:
                connection.ehlo()
                if self._ssl_context is not None:
                    if not connection.has_extn("starttls"):
                        raise DeliveryError(f"{config.host}:{config.port} does not offer STARTTLS", permanent=True)
                    connection.starttls(context=self._ssl_context)
                    connection.ehlo()
                if config.username is not None and self._password is not None:
                    connection.login(config.username, self._password)
                connection.send_message(message)
        except smtplib.SMTPAuthenticationError as error:
            raise DeliveryError(
                f"{config.host}:{config.port} refused the login for {config.username!r} "
                f"({error.smtp_code} {_text(error.smtp_error)}): check the password",
                permanent=True,
            ) from None
        except smtplib.SMTPRecipientsRefused as error:
            raise DeliveryError(
                f"{config.host}:{config.port} refused the recipients {', '.join(error.recipients)}", permanent=True
            ) from None
        except smtplib.SMTPResponseException as error:
            permanent = 500 <= error.smtp_code < 600
            raise DeliveryError(
                f"{config.host}:{config.port} answered {error.smtp_code} {_text(error.smtp_error)}",
                permanent=permanent,
            ) from None
        except ssl.SSLCertVerificationError as error:
            raise DeliveryError(
                f"the certificate of {config.host} is not trusted ({error.verify_message}): "
                "set ca_file to the CA that signed it",
                permanent=True,
            ) from None
        except TimeoutError:
            raise DeliveryError(f"{config.host}:{config.port} did not answer within {timeout:g} s") from None
        except (OSError, smtplib.SMTPException) as error:
            detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise DeliveryError(f"cannot send through {config.host}:{config.port}: {detail}") from None


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def build(config: ChannelConfig, setup: ChannelSetup) -> EmailChannel:
    """An email channel; the password is read now and registered as a secret."""
    password: str | None = None
    problem: str | None = None
    if config.password_env is not None:
        password = setup.variable(config.password_env)
        if password is None:
            problem = f"the environment variable {config.password_env} (password_env) is not set"
    elif config.password_file is not None:
        path = setup.resolve(config.password_file)
        try:
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            problem = f"cannot read password_file {path}: {error.strerror or error}"
        setup.redactor.add(password)
    context: ssl.SSLContext | None = None
    if config.starttls:
        try:
            cafile = None if config.ca_file is None else str(setup.resolve(config.ca_file))
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as error:
            problem = problem or f"cannot load ca_file {config.ca_file}: {error}"
            context = ssl.create_default_context()
    return EmailChannel(config, password, problem, context)
