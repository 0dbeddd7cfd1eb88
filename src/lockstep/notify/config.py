"""The `[notifications]` table: which channels hear about which events.

Same rules as the rest of lockstep.toml (src/lockstep/config/model.py): unknown keys are errors,
every field has a description and an example because the sample config and docs/config.md are
written from them, and secrets never sit in the file. A Slack webhook URL carries its token, an
HMAC key and an SMTP password are credentials: the config names the environment variable (or file)
that holds them, and a validator refuses the inline form with the key to use instead.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lockstep.notify.events import EVENT_KINDS

ChannelKind = Literal["slack", "webhook", "email", "healthchecks", "github-actions", "event-log", "ntfy", "pagerduty"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = (
    "slack",
    "webhook",
    "email",
    "healthchecks",
    "github-actions",
    "event-log",
    "ntfy",
    "pagerduty",
)

_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_QUERY_NAMES = re.compile(
    r"token|secret|passw|api_?key|access_?key|signature|^sig$|^key$|^auth$|^code$", re.IGNORECASE
)

# Which settings each kind reads; any other setting given for that kind is an error, not silently ignored.
_SETTINGS: dict[str, frozenset[str]] = {
    "slack": frozenset({"url_env"}),
    "webhook": frozenset({"url", "url_env", "secret_env"}),
    "email": frozenset(
        {"host", "port", "sender", "recipients", "username", "password_env", "password_file", "starttls", "ca_file"}
    ),
    "healthchecks": frozenset({"url", "url_env"}),
    "github-actions": frozenset(),
    "event-log": frozenset({"path"}),
    "ntfy": frozenset({"url", "url_env", "secret_env"}),
    "pagerduty": frozenset({"url", "secret_env"}),
}
_COMMON = frozenset({"kind", "name", "events"})

# Inline secrets people will try, and what to write instead.
_INLINE_SECRETS: dict[str, str] = {
    "password": "password_env (the name of an environment variable that holds it) or password_file",
    "smtp_password": "password_env (the name of an environment variable that holds it) or password_file",
    "secret": "secret_env (the name of an environment variable that holds it)",
    "hmac_secret": "secret_env (the name of an environment variable that holds it)",
    "hmac_key": "secret_env (the name of an environment variable that holds it)",
    "signing_secret": "secret_env (the name of an environment variable that holds it)",
    "token": "url_env or secret_env (the name of an environment variable that holds it)",
    "webhook_url": "url_env (the name of an environment variable that holds the URL)",
    "access_token": "secret_env (the name of an environment variable that holds it)",
    "routing_key": "secret_env (the name of an environment variable that holds it)",
    "integration_key": "secret_env (the name of an environment variable that holds it)",
}


class _Section(BaseModel):
    """Every table rejects keys it does not know: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


def _check_environment_name(key: str, name: str | None, holds: str) -> str | None:
    if name is not None and not _ENVIRONMENT_NAME.fullmatch(name):
        raise ValueError(
            f"{key} is the NAME of an environment variable, not the {holds}: "
            f"set the {holds} in that variable and put its name here"
        )
    return name


def _check_inline_url(url: str) -> None:
    """A URL in the file may identify an endpoint, but must not carry credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// URL with a host")
    if parts.password is not None or parts.username is not None:
        raise ValueError(
            "url contains credentials: put the whole URL in an environment variable and name it in url_env"
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_QUERY_NAMES.search(name):
            raise ValueError(
                f"url carries a credential in its query ({name}=...): put the whole URL in an environment "
                "variable and name it in url_env"
            )


class ChannelConfig(_Section):
    """One notification channel: where to send, and which events."""

    kind: ChannelKind = Field(
        description=(
            'Where the notification goes: "slack" (incoming webhook), "webhook" (JSON POST, optionally '
            'HMAC-signed), "email" (SMTP with STARTTLS), "healthchecks" (ping URLs: /start, success, /fail), '
            '"github-actions" (annotations and the step summary when GITHUB_ACTIONS=true), '
            '"event-log" (a local JSON-lines file), "ntfy" (a push notification to an ntfy topic) or '
            '"pagerduty" (PagerDuty Events API v2: failures open an incident, the next success resolves it).'
        ),
        examples=["slack"],
    )
    name: str | None = Field(
        default=None,
        description="A label for warnings about this channel. Default: the kind, numbered when it repeats.",
        examples=["ops-slack"],
    )
    events: list[str] = Field(
        default_factory=lambda: ["*"],
        description=(
            "Event kinds this channel receives, as glob patterns: deploy.started, deploy.succeeded, "
            "deploy.failed, deploy.rolled_back, rollback.done, rollback.failed, snapshot.created, snapshot.verified, "
            "snapshot.verification_failed, backup.failed, lock.broken, snapshot.rpo_exceeded. A pagerduty "
            "channel also hears the successes that resolve the alerts its filter lets it open."
        ),
        examples=[["deploy.*", "*.failed"]],
    )
    url: str | None = Field(
        default=None,
        description=(
            "webhook, healthchecks, ntfy: the URL to POST to or ping (for ntfy the topic URL, "
            "https://ntfy.sh/TOPIC or a topic on your own server). pagerduty: the Events API v2 endpoint, "
            "default https://events.pagerduty.com/v2/enqueue (https://events.eu.pagerduty.com/v2/enqueue for "
            "an EU account). It must not contain credentials; a URL that does belongs in an environment "
            "variable named by url_env."
        ),
        examples=["https://hc-ping.com/your-uuid"],
    )
    url_env: str | None = Field(
        default=None,
        description=(
            "slack (required), webhook, healthchecks, ntfy: name of the environment variable holding the URL "
            "(a Slack incoming-webhook URL contains its token, so it never goes in this file)."
        ),
        examples=["SLACK_WEBHOOK_URL"],
    )
    secret_env: str | None = Field(
        default=None,
        description=(
            "webhook: name of the environment variable holding the HMAC key; with it every request carries "
            "X-Lockstep-Signature: sha256=HEX, the HMAC-SHA256 of the body. To verify, compute "
            "hmac.new(key, raw_body, sha256).hexdigest() over the request body exactly as received (before "
            "parsing the JSON), prefix sha256= and compare with hmac.compare_digest; X-Lockstep-Delivery is "
            "the same on every retry of one event, so a receiver can drop duplicates. Redirects are not followed. "
            "ntfy: name of the environment variable holding an access token (tk_...) for a protected topic, sent "
            "as Authorization: Bearer. pagerduty (required): name of the environment variable holding the "
            "routing key, the Integration Key of the service's Events API v2 integration."
        ),
        examples=["LOCKSTEP_WEBHOOK_SECRET"],
    )
    host: str | None = Field(default=None, description="email: the SMTP server.", examples=["smtp.example.com"])
    port: int = Field(
        default=587, ge=1, le=65535, description="email: the SMTP server's port (submission).", examples=[2525]
    )
    sender: str | None = Field(default=None, description="email: the From address.", examples=["lockstep@example.com"])
    recipients: list[str] = Field(
        default_factory=list, description="email: the To addresses.", examples=[["ops@example.com"]]
    )
    username: str | None = Field(
        default=None,
        description="email: the SMTP login; without it lockstep sends without AUTH.",
        examples=["lockstep"],
    )
    password_env: str | None = Field(
        default=None,
        description="email: name of the environment variable holding the SMTP password.",
        examples=["SMTP_PASSWORD"],
    )
    password_file: Path | None = Field(
        default=None,
        description="email: file holding the SMTP password (relative to lockstep.toml's directory).",
        examples=["/etc/lockstep/smtp-password"],
    )
    starttls: bool = Field(
        default=True,
        description=(
            "email: upgrade the connection with STARTTLS and verify the server's certificate before logging "
            "in or sending. Turn off only for a relay on the same machine; a password then is refused."
        ),
        examples=[False],
    )
    ca_file: Path | None = Field(
        default=None,
        description=(
            "email: PEM file of the certificate authorities to trust for the SMTP server instead of the "
            "system's (an internal CA). Relative to lockstep.toml's directory."
        ),
        examples=["/etc/ssl/internal-ca.pem"],
    )
    path: Path | None = Field(
        default=None,
        description="event-log: the JSON-lines file to append every event to (relative to lockstep.toml's directory).",
        examples=[".lockstep/events.jsonl"],
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline_secrets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, instead in _INLINE_SECRETS.items():
            if key in data:
                raise ValueError(f"{key} would put a secret in the config file: remove it and use {instead}")
        if data.get("kind") == "slack" and "url" in data:
            raise ValueError(
                "url would put the Slack webhook URL, which contains its token, in the config file: "
                "remove it, put the URL in an environment variable and name that variable in url_env"
            )
        return data

    @field_validator("url_env", "secret_env", "password_env")
    @classmethod
    def _check_variable_names(cls, name: str | None, info: ValidationInfo) -> str | None:
        key = info.field_name or "url_env"
        holds = {"url_env": "URL", "secret_env": "secret", "password_env": "password"}[key]
        return _check_environment_name(key, name, holds)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is not None:
            _check_inline_url(url)
        return url

    @field_validator("events")
    @classmethod
    def _check_events(cls, patterns: list[str]) -> list[str]:
        if not patterns:
            raise ValueError('events is empty: list the event kinds to send, or leave it out for all ("*")')
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(kind, pattern) for kind in EVENT_KINDS):
                raise ValueError(f"events: {pattern!r} matches no event kind; the kinds are {', '.join(EVENT_KINDS)}")
        return patterns

    @field_validator("recipients")
    @classmethod
    def _check_recipients(cls, recipients: list[str]) -> list[str]:
        for address in recipients:
            if "@" not in address:
                raise ValueError(f"recipients: {address!r} is not an email address")
        return recipients

    @model_validator(mode="after")
    def _check_kind_settings(self) -> ChannelConfig:
        allowed = _SETTINGS[self.kind] | _COMMON
        foreign = sorted(key for key in self.model_fields_set if key not in allowed)
        if foreign:
            usable = ", ".join(sorted(_SETTINGS[self.kind])) or "no settings besides kind, name and events"
            raise ValueError(f"{', '.join(foreign)}: not a setting of a {self.kind} channel (it takes {usable})")
        if self.kind == "slack" and self.url_env is None:
            raise ValueError("a slack channel needs url_env: the name of the variable holding the webhook URL")
        if self.kind in ("webhook", "healthchecks", "ntfy") and (self.url is None) == (self.url_env is None):
            raise ValueError(f"a {self.kind} channel needs exactly one of url and url_env")
        if self.kind == "ntfy" and self.url is not None and not urlsplit(self.url).path.strip("/"):
            raise ValueError("url names no ntfy topic: append the topic, e.g. https://ntfy.sh/TOPIC")
        if self.kind == "pagerduty" and self.secret_env is None:
            raise ValueError(
                "a pagerduty channel needs secret_env: the NAME of the environment variable holding the "
                "routing key (the Integration Key of the service's Events API v2 integration); set the key in "
                'that variable and write secret_env = "PAGERDUTY_ROUTING_KEY" (the key never goes in this file)'
            )
        if self.kind == "email":
            self._check_email()
        if self.kind == "event-log" and self.path is None:
            raise ValueError("an event-log channel needs path: the file to append events to")
        return self

    def _check_email(self) -> None:
        missing = [key for key in ("host", "sender") if getattr(self, key) is None]
        if not self.recipients:
            missing.append("recipients")
        if missing:
            raise ValueError(f"an email channel needs {', '.join(missing)}")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("both password_env and password_file are set: keep only one of them")
        has_password = self.password_env is not None or self.password_file is not None
        if has_password and self.username is None:
            raise ValueError("a password is set but no username: set username for SMTP AUTH")
        if self.username is not None and not has_password:
            raise ValueError("username is set without a password; add password_env or password_file")
        if has_password and not self.starttls:
            raise ValueError("starttls = false would send the SMTP password unencrypted: remove it or the password")

    def resolved(self, base: Path) -> ChannelConfig:
        """A copy whose path, password_file and ca_file are absolute, relative ones taken from `base`."""
        update = {}
        for key in ("path", "password_file", "ca_file"):
            value = getattr(self, key)
            if isinstance(value, Path):
                value = Path(os.path.expanduser(value))  # `~/x` in the home, never under the project
                update[key] = value if value.is_absolute() else base / value
        return self.model_copy(update=update) if update else self

    def display_name(self, index: int) -> str:
        """The name warnings use: `name`, or the kind with its position when no name was given."""
        return self.name or f"{self.kind}#{index + 1}"


class NotificationsConfig(_Section):
    """Channels that hear about deploys, rollbacks, snapshots and failures. Without this table: none."""

    channels: list[ChannelConfig] = Field(
        default_factory=list,
        description=(
            "The channels, each a table with kind, an optional events filter and that kind's settings "
            "([[notifications.channels]])."
        ),
        examples=[[{"kind": "slack", "url_env": "SLACK_WEBHOOK_URL", "events": ["deploy.*"]}]],
    )
    timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="How long one attempt to reach a channel may take.",
        examples=[10.0],
    )
    attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts per event and channel before lockstep gives up and prints a warning.",
        examples=[5],
    )
    retry_delay_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Wait before the second attempt; it doubles before each further attempt.",
        examples=[2.0],
    )

    def resolved(self, base: Path) -> NotificationsConfig:
        """A copy whose channels' relative paths are anchored at `base` (the directory of lockstep.toml)."""
        return self.model_copy(update={"channels": [channel.resolved(base) for channel in self.channels]})
