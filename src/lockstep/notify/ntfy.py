"""ntfy: a push notification to a topic (https://ntfy.sh/TOPIC or a self-hosted server).

The body is the summary and the details as text; Title, Priority and Tags are the headers ntfy
documents, so a failed deploy rings louder on the phone than a snapshot. A protected topic takes
an access token, read from the variable secret_env names and sent as `Authorization: Bearer`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig
from lockstep.notify.events import DEPLOY_FAILED, FAILURE_KINDS, ROLLBACK_FAILED, severity
from lockstep.notify.transport import url_credentials
from lockstep.notify.webhook import missing_url, request, url_from

# Failures that may leave nothing serving (a deploy or rollback that could not undo everything) page
# loudest; the other failures (an automatic rollback that restored the previous release, a failed
# backup or verification) ring as high; everything else as ntfy's default.
URGENT_KINDS = frozenset({DEPLOY_FAILED, ROLLBACK_FAILED})
_TAGS = {"error": "x", "warning": "warning", "info": "white_check_mark"}  # ntfy shows these as emojis
MAX_BODY_BYTES = 4096  # ntfy turns a longer message into an attachment


def priority(kind: str) -> str:
    """The Priority header for an event of `kind`: urgent, high or default."""
    if kind in URGENT_KINDS:
        return "urgent"
    if kind in FAILURE_KINDS:
        return "high"
    return "default"


def header_text(text: str) -> str:
    """`text` on one line, RFC 2047-encoded when it is not ASCII (HTTP headers are Latin-1; ntfy decodes it)."""
    line = " ".join(text.split())
    if line.isascii():
        return line
    return "=?UTF-8?B?" + base64.b64encode(line.encode("utf-8")).decode("ascii") + "?="


def title(document: Mapping[str, Any], project: str) -> str:
    """`shop (production): deploy rolled back`, the notification's first line."""
    environment = document.get("environment")
    where = f"{project} ({environment})" if environment else project
    what = str(document.get("kind", "")).replace(".", " ").replace("_", " ")
    return f"{where}: {what}"


def tags(document: Mapping[str, Any]) -> str:
    """The Tags header: the severity's emoji, then the event kind and the environment as plain tags."""
    kind = str(document.get("kind", ""))
    names = [_TAGS[severity(kind)], kind]
    if document.get("environment"):
        names.append(str(document["environment"]))
    return ",".join(name.replace(",", " ") for name in names)


def body(document: Mapping[str, Any]) -> bytes:
    """The summary, then one `key: value` line per detail, cut to ntfy's message size."""
    lines = [str(document.get("summary", ""))]
    details = document.get("details") or {}
    facts = {"deploy": document.get("deploy_id"), **(details if isinstance(details, Mapping) else {})}
    rendered = [
        f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)}"
        for key, value in facts.items()
        if value is not None
    ]
    if rendered:
        lines += ["", *rendered]
    encoded = "\n".join(lines).encode("utf-8")
    if len(encoded) <= MAX_BODY_BYTES:
        return encoded
    return encoded[: MAX_BODY_BYTES - 3].decode("utf-8", "ignore").encode("utf-8") + "…".encode()


class NtfyChannel:
    """POSTs each event to an ntfy topic."""

    def __init__(self, url: str | None, token: str | None, project: str, config: ChannelConfig) -> None:
        self._url = url
        self._token = token
        self._project = project
        self._config = config

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Publish `document` to the topic."""
        if self._url is None:
            raise missing_url(self._config)
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Title": header_text(title(document, self._project)),
            "Priority": priority(str(document.get("kind", ""))),
            "Tags": header_text(tags(document)),
        }
        if self._config.secret_env is not None:
            if self._token is None:
                raise DeliveryError(
                    f"the environment variable {self._config.secret_env} (secret_env) is not set: set it to the "
                    "ntfy access token, or remove secret_env for a topic anyone may publish to",
                    permanent=True,
                )
            if url_credentials(self._url) is not None:
                raise DeliveryError(
                    f"the URL in {self._config.url_env} (url_env) carries login credentials and secret_env "
                    "names an access token as well; remove one of the two",
                    permanent=True,
                )
            headers["Authorization"] = f"Bearer {self._token}"
        request(self._url, body(document), headers, timeout)


def build(config: ChannelConfig, setup: ChannelSetup) -> NtfyChannel:
    """An ntfy channel; the token (and a URL from url_env) are read now and registered as secrets."""
    return NtfyChannel(url_from(config, setup), setup.variable(config.secret_env), setup.project_name, config)
