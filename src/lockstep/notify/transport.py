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

import threading
import urllib.error
import urllib.request
from email.message import Message
from typing import IO
from urllib.parse import urlsplit

MAX_ANSWER_BYTES = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


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
