"""Generic webhook: POST the event document as JSON, optionally signed with HMAC-SHA256.

The signature (`X-Lockstep-Signature: sha256=<hex>` over the exact body bytes, GitHub's scheme)
lets the receiver check the request came from whoever holds the key. `X-Lockstep-Delivery` stays
the same across retries of one event, so a receiver can ignore a retry that did arrive twice.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import lockstep
from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig
from lockstep.notify.transport import describe_http_error, open_within, outgoing_request

USER_AGENT = f"lockstep/{lockstep.__version__}"
SIGNATURE_HEADER = "X-Lockstep-Signature"

# Statuses worth another attempt; any other 4xx means the request itself is wrong.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})


def signature(secret: str, body: bytes) -> str:
    """The X-Lockstep-Signature value for `body`: "sha256=" and the hex HMAC-SHA256 keyed with `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def request(url: str, body: bytes, headers: Mapping[str, str], timeout: float, method: str = "POST") -> int:
    """Send one HTTP request and return its status; raise DeliveryError unless the answer is 2xx.

    The reason never contains the URL: for Slack and many webhooks the URL is the credential.
    The whole exchange takes at most `timeout` seconds, and a redirect is a failure (see transport).
    """
    outgoing = outgoing_request(url, body, method, {"User-Agent": USER_AGENT, **headers})
    try:
        status = open_within(outgoing, timeout)
    except urllib.error.HTTPError as error:
        permanent = 300 <= error.code < 500 and error.code not in _RETRYABLE_CLIENT_ERRORS
        raise DeliveryError(describe_http_error(error), permanent=permanent) from None
    except urllib.error.URLError as error:
        raise DeliveryError(f"cannot connect: {_describe(error.reason)}") from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryError(f"connection failed: {_describe(error)}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")
    return status


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def url_from(config: ChannelConfig, setup: ChannelSetup) -> str | None:
    """The channel's URL, inline or from the variable url_env names (then registered as a secret)."""
    return config.url if config.url is not None else setup.secret_url(config.url_env)


def missing_url(config: ChannelConfig) -> DeliveryError:
    """The error for a URL that url_env was supposed to provide."""
    return DeliveryError(
        f"the environment variable {config.url_env} (url_env) is not set: set it to the URL", permanent=True
    )


class WebhookChannel:
    """POSTs the JSON document to a URL."""

    def __init__(self, url: str | None, secret: str | None, config: ChannelConfig) -> None:
        self._url = url
        self._secret = secret
        self._config = config

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """POST `document`; sign it when a secret is configured."""
        if self._url is None:
            raise missing_url(self._config)
        if self._config.secret_env is not None and self._secret is None:
            raise DeliveryError(
                f"the environment variable {self._config.secret_env} (secret_env) is not set: "
                "set it to the HMAC key, or remove secret_env to send unsigned",
                permanent=True,
            )
        body = json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-Lockstep-Event": str(document.get("kind", "")),
            "X-Lockstep-Delivery": _delivery_id(document),
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        request(self._url, body, headers, timeout)


def _delivery_id(document: Mapping[str, Any]) -> str:
    """Stable per event (same document → same ID), so retries carry the same delivery ID."""
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return str(uuid.UUID(bytes=hashlib.sha256(canonical).digest()[:16], version=4))


def build(config: ChannelConfig, setup: ChannelSetup) -> WebhookChannel:
    """A webhook channel from its config; secrets are read now and registered with the redactor."""
    return WebhookChannel(url_from(config, setup), setup.variable(config.secret_env), config)
