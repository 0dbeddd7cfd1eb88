"""The [notifications] table: valid channels load; unknown kinds, inline secrets and stray keys fail by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lockstep.notify.config import CHANNEL_KINDS, ChannelConfig, NotificationsConfig


def error_text(source: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        NotificationsConfig.model_validate(source)
    return str(caught.value)


def test_absent_table_means_no_channels() -> None:
    """An empty [notifications] (or none) has no channels and the documented defaults."""
    config = NotificationsConfig()
    assert config.channels == []
    assert (config.timeout_seconds, config.attempts, config.retry_delay_seconds) == (5.0, 3, 1.0)
    assert NotificationsConfig.model_validate({}) == config


def test_one_channel_of_every_kind_loads() -> None:
    """Each kind with its own settings validates; events default to every kind."""
    config = NotificationsConfig.model_validate(
        {
            "channels": [
                {"kind": "slack", "url_env": "SLACK_WEBHOOK_URL", "events": ["deploy.*"]},
                {"kind": "webhook", "url": "https://hooks.example.com/lockstep", "secret_env": "HOOK_SECRET"},
                {
                    "kind": "email",
                    "host": "smtp.example.com",
                    "sender": "lockstep@example.com",
                    "recipients": ["ops@example.com"],
                    "username": "lockstep",
                    "password_file": "/etc/lockstep/smtp-password",
                },
                {"kind": "healthchecks", "url": "https://hc-ping.com/0f6e1c4a"},
                {"kind": "github-actions"},
                {"kind": "event-log", "path": ".lockstep/events.jsonl"},
                {"kind": "ntfy", "url": "https://ntfy.sh/shop-alerts-3f9c", "secret_env": "NTFY_TOKEN"},
                {"kind": "pagerduty", "secret_env": "PAGERDUTY_ROUTING_KEY"},
            ]
        }
    )
    assert [channel.kind for channel in config.channels] == list(CHANNEL_KINDS)
    assert config.channels[1].events == ["*"]
    assert config.channels[2].port == 587 and config.channels[2].starttls
    assert [channel.display_name(index) for index, channel in enumerate(config.channels)][:2] == [
        "slack#1",
        "webhook#2",
    ]


def test_unknown_kind_is_refused_naming_the_key() -> None:
    """kind = "opsgenie" fails at channels.0.kind and lists the kinds that exist."""
    text = error_text({"channels": [{"kind": "opsgenie"}]})
    assert "channels.0.kind" in text
    assert "slack" in text and "event-log" in text and "pagerduty" in text


@pytest.mark.parametrize(
    ("channel", "key", "instead"),
    [
        ({"kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/xyz"}, "url", "url_env"),
        ({"kind": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/xyz"}, "webhook_url", "url_env"),
        ({"kind": "webhook", "url": "https://h.example.com", "secret": "s3cr3t-value"}, "secret", "secret_env"),
        ({"kind": "webhook", "url": "https://h.example.com", "hmac_key": "s3cr3t-value"}, "hmac_key", "secret_env"),
        ({"kind": "email", "host": "smtp.example.com", "password": "hunter22"}, "password", "password_env"),
        ({"kind": "webhook", "url": "https://h.example.com", "token": "abc123456"}, "token", "url_env"),
        ({"kind": "pagerduty", "routing_key": "R0uting0Key0of0the0integration99"}, "routing_key", "secret_env"),
        ({"kind": "pagerduty", "integration_key": "R0uting0Key0of0the0integration99"}, "integration_key", "secret_env"),
        ({"kind": "ntfy", "url": "https://ntfy.sh/t", "access_token": "tk_abcdef0123"}, "access_token", "secret_env"),
    ],
)
def test_inline_secret_is_refused_with_the_key_to_use(channel: dict[str, Any], key: str, instead: str) -> None:
    """A secret written into the file fails, and the message names both the key and its replacement."""
    text = error_text({"channels": [channel]})
    assert f"{key} would put" in text
    assert instead in text
    assert "channels.0" in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:hunter22@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/x?token=abc123", "token=..."),
        ("https://hooks.example.com/x?api_key=abc123", "api_key=..."),
        ("ftp://hooks.example.com/x", "http:// or https://"),
    ],
)
def test_webhook_url_with_credentials_is_refused(url: str, expected: str) -> None:
    """An inline url may name an endpoint but not carry a credential: the message points at url_env."""
    text = error_text({"channels": [{"kind": "webhook", "url": url}]})
    assert "channels.0.url" in text
    assert expected in text


def test_variable_name_must_be_a_name_not_the_secret() -> None:
    """url_env = "https://..." (the URL itself) is refused: it must name an environment variable."""
    text = error_text({"channels": [{"kind": "slack", "url_env": "https://hooks.slack.com/services/T/B/x"}]})
    assert "channels.0.url_env" in text
    assert "NAME of an environment variable" in text


def test_setting_of_another_kind_is_refused() -> None:
    """host on a slack channel is an error that says which settings a slack channel takes."""
    text = error_text({"channels": [{"kind": "slack", "url_env": "SLACK_URL", "host": "smtp.example.com"}]})
    assert "host: not a setting of a slack channel" in text
    assert "url_env" in text


def test_unknown_key_is_refused() -> None:
    """A typo (evnets) is an error at its own location, not a silent default."""
    text = error_text({"channels": [{"kind": "github-actions", "evnets": ["deploy.*"]}]})
    assert "channels.0.evnets" in text


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ({"kind": "slack"}, "needs url_env"),
        ({"kind": "webhook"}, "exactly one of url and url_env"),
        ({"kind": "healthchecks", "url": "https://hc-ping.com/x", "url_env": "HC_URL"}, "exactly one of url"),
        ({"kind": "event-log"}, "needs path"),
        ({"kind": "ntfy"}, "exactly one of url and url_env"),
        ({"kind": "ntfy", "url": "https://ntfy.sh/"}, "url names no ntfy topic: append the topic"),
        ({"kind": "ntfy", "url": "https://ntfy.sh/t", "host": "x"}, "host: not a setting of a ntfy channel"),
        ({"kind": "pagerduty", "secret_env": "PD_KEY", "url_env": "PD_URL"}, "url_env: not a setting of a pagerduty"),
        ({"kind": "email", "host": "smtp.example.com"}, "needs sender, recipients"),
        (
            {"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "password_env": "P"},
            "no username",
        ),
        (
            {
                "kind": "email",
                "host": "h",
                "sender": "a@b",
                "recipients": ["c@d"],
                "username": "u",
                "password_env": "P",
                "starttls": False,
            },
            "unencrypted",
        ),
        ({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["not-an-address"]}, "not an email address"),
    ],
)
def test_incomplete_channel_says_what_is_missing(channel: dict[str, Any], expected: str) -> None:
    """Each kind's required settings and unsafe combinations are reported in words."""
    assert expected in error_text({"channels": [channel]})


def test_event_pattern_that_matches_nothing_is_refused() -> None:
    """events = ["deploy.faild"] would never fire: refused with the list of kinds."""
    text = error_text({"channels": [{"kind": "github-actions", "events": ["deploy.faild"]}]})
    assert "'deploy.faild' matches no event kind" in text
    assert "deploy.failed" in text


def test_every_field_has_a_description_and_an_example() -> None:
    """The sample config and docs/config.md are generated from these; a field without them breaks both."""
    for model in (NotificationsConfig, ChannelConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert field.examples, f"{model.__name__}.{name} has no example"
    examples = NotificationsConfig.model_fields["channels"].examples
    assert examples is not None
    NotificationsConfig.model_validate({"channels": examples[0]})


def test_resolved_anchors_relative_paths(tmp_path: Path) -> None:
    """resolved(base) makes event-log paths, password files and CA files absolute; absolute ones stay."""
    config = NotificationsConfig.model_validate(
        {
            "channels": [
                {"kind": "event-log", "path": "logs/events.jsonl"},
                {
                    "kind": "email",
                    "host": "h",
                    "sender": "a@b",
                    "recipients": ["c@d"],
                    "username": "u",
                    "password_file": "secrets/smtp",
                    "ca_file": "/etc/ssl/ca.pem",
                },
            ]
        }
    ).resolved(tmp_path)
    assert config.channels[0].path == tmp_path / "logs/events.jsonl"
    assert config.channels[1].password_file == tmp_path / "secrets/smtp"
    assert config.channels[1].ca_file == Path("/etc/ssl/ca.pem")


def test_pagerduty_without_secret_env_names_the_key_and_the_fix() -> None:
    """The routing key is the one thing a pagerduty channel cannot do without: the error names
    secret_env, says what the variable must hold and shows the line to write."""
    text = error_text({"channels": [{"kind": "pagerduty", "url": "https://events.eu.pagerduty.com/v2/enqueue"}]})
    assert "channels.0" in text
    assert "a pagerduty channel needs secret_env" in text
    assert "routing key (the Integration Key of the service's Events API v2 integration)" in text
    assert 'secret_env = "PAGERDUTY_ROUTING_KEY"' in text


def test_pagerduty_secret_env_must_name_a_variable_not_hold_the_key() -> None:
    """Pasting the routing key itself into secret_env is refused, so the key stays out of the file's
    meaning too (it is still in the file: the message says to move it)."""
    text = error_text({"channels": [{"kind": "pagerduty", "secret_env": "R0uting-Key.of/the+integration"}]})
    assert "channels.0.secret_env" in text
    assert "NAME of an environment variable" in text
