"""One HTTP request for a notification or a ping, over within its timeout.

urllib's `timeout` bounds each socket operation, not the request: a server that answers one byte
a second (a broken proxy, a tarpit) kept a ping, and with it `lockstep backup`, waiting for ever,
even past SIGTERM (the /fail ping then waited too). Here the request runs in a daemon thread and
the caller stops waiting at the deadline; the thread ends when the socket does.
"""

from __future__ import annotations

import threading
import urllib.request

MAX_ANSWER_BYTES = 64 * 1024


def open_within(request: urllib.request.Request, timeout: float) -> int:
    """Send `request` and read its answer (the first 64 KiB) within `timeout` seconds in all.

    Returns the status; raises what urllib raises (HTTPError for an error status) or
    TimeoutError when the whole exchange took longer."""
    outcome: list[int | BaseException] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
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
