"""One HTTP request for a notification or a ping, over within its timeout, and never redirected.

urllib's `timeout` bounds each socket operation, not the request: a server that answers one byte
a second (a broken proxy, a tarpit) kept a ping, and with it `lockstep backup`, waiting for ever,
even past SIGTERM (the /fail ping then waited too). Here the request runs in a daemon thread and
the caller stops waiting at the deadline; the thread ends when the socket does.

Redirects are not followed: for a 301/302/303 urllib resends a POST as a GET without its body,
which the receiver answers 200, so an event was reported delivered while nobody got it (and the
signature and event headers went along to wherever the Location pointed). A 3xx is a failure that
says where the URL points, so the operator can configure that URL instead.
"""

from __future__ import annotations

import base64
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

MAX_ANSWER_BYTES = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


def url_credentials(url: str) -> tuple[str, str] | None:
    """The user and password of `https://user:password@host/...`, percent-decoded as curl
    decodes them (`p%40ss` is `p@ss`); None without an `@` in the authority."""
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return None
    user, _, password = netloc.rpartition("@")[0].partition(":")
    return unquote(user), unquote(password)


def url_password_texts(url: str | None) -> list[str]:
    """The password of a URL as written (`p%40ss`) and as sent (`p@ss`), for the redactor."""
    credentials = url_credentials(url or "")
    if credentials is None or not credentials[1]:
        return []
    written = urlsplit(url or "").netloc.rpartition("@")[0].partition(":")[2]
    return sorted({written, credentials[1]})


def outgoing_request(url: str, data: bytes | None, method: str, headers: Mapping[str, str]) -> urllib.request.Request:
    """A request for `url`; credentials in it go as HTTP basic auth, as curl sends them.

    urllib takes `user:password@host` for the host name (the ping failed: "Name or service not
    known"), so the credentials leave the URL and become an Authorization header. No redirect is
    followed (`open_within`), so they only ever reach the host they were written for."""
    credentials = url_credentials(url)
    if credentials is None:
        return urllib.request.Request(url, data=data, method=method, headers=dict(headers))
    parts = urlsplit(url)
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    token = base64.b64encode(":".join(credentials).encode("utf-8")).decode("ascii")
    with_authorization = {**headers, "Authorization": f"Basic {token}"}
    return urllib.request.Request(bare, data=data, method=method, headers=with_authorization)


def open_within(request: urllib.request.Request, timeout: float) -> int:
    """Send `request` and read its answer (the first 64 KiB) within `timeout` seconds in all.

    Returns the status; raises what urllib raises (HTTPError for any status from 300 up) or
    TimeoutError when the whole exchange took longer."""
    outcome: list[int | BaseException] = []

    def attempt() -> None:
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                response.read(MAX_ANSWER_BYTES)
                outcome.append(int(response.status))
        except BaseException as error:  # handed to the caller's thread
            outcome.append(error)

    worker = threading.Thread(target=attempt, name="lockstep-http-request", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError(f"no complete answer within {timeout:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def redirect_target(error: urllib.error.HTTPError) -> str | None:
    """For a 3xx answer: the scheme and host it redirects to (never the path: it may hold a token)."""
    if not 300 <= error.code < 400:
        return None
    location = error.headers.get("Location") if error.headers is not None else None
    if not location:
        return "another URL"
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "another path on the same host"


def describe_http_error(error: urllib.error.HTTPError) -> str:
    """`HTTP 500 Internal Server Error`, or for a redirect what to do about it."""
    text = f"HTTP {error.code} {error.reason}".rstrip()
    target = redirect_target(error)
    if target is None:
        return text
    return f"{text}: the URL redirects to {target}, and lockstep does not follow redirects: configure the final URL"
