"""Slack incoming webhook: a one-line `text` (what notifications and old clients show) plus blocks.

The webhook URL is the credential, so it only ever comes from the variable url_env names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lockstep.notify import ChannelSetup
from lockstep.notify.config import ChannelConfig
from lockstep.notify.webhook import missing_url, request, url_from

_ICONS = {"error": ":x:", "warning": ":warning:", "info": ":white_check_mark:"}
_MAX_FIELDS = 10  # Slack's limit for a section's fields
_MAX_FIELD_TEXT = 1900  # Slack allows 2000 characters per field


def _escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _value_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= _MAX_FIELD_TEXT else text[: _MAX_FIELD_TEXT - 1] + "…"


def message(document: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack message for an event document."""
    icon = _ICONS.get(str(document.get("severity")), ":information_source:")
    environment = document.get("environment")
    where = f"[{environment}] " if environment else ""
    summary = str(document.get("summary", ""))
    text = f"{icon} {where}{summary}"
    context = [f"`{document.get('kind')}`", str(document.get("at", ""))]
    if document.get("deploy_id"):
        context.append(f"deploy `{document['deploy_id']}`")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(" · ".join(context))}]},
    ]
    details = document.get("details") or {}
    if isinstance(details, Mapping) and details:
        fields = [
            {"type": "mrkdwn", "text": _escape(f"*{key}*\n{_value_text(value)}")}
            for key, value in list(details.items())[:_MAX_FIELDS]
        ]
        blocks.insert(1, {"type": "section", "fields": fields})
    return {"text": _escape(text), "blocks": blocks}


class SlackChannel:
    """Posts to a Slack incoming webhook."""

    def __init__(self, url: str | None, config: ChannelConfig) -> None:
        self._url = url
        self._config = config

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Post the message for `document`."""
        if self._url is None:
            raise missing_url(self._config)
        body = json.dumps(message(document), ensure_ascii=False).encode("utf-8")
        request(self._url, body, {"Content-Type": "application/json"}, timeout)


def build(config: ChannelConfig, setup: ChannelSetup) -> SlackChannel:
    """A Slack channel; the webhook URL is read from url_env now and registered as a secret."""
    return SlackChannel(url_from(config, setup), config)
