"""Just enough HTTP/1.1 to forward messages faithfully: heads, body framing, hop-by-hop headers.

Bodies are never parsed, only framed: the proxy copies them in bounded pieces so a 50 MB upload
costs a few hundred KiB of memory, not 50 MB.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

# RFC 9110 section 7.6.1, plus the non-standard ones clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
FORWARDED_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
COPY_SIZE = 256 * 1024
HEAD_LIMIT = 64 * 1024
BUFFERED_BODY_LIMIT = 64 * 1024  # bodies up to this size are read whole: one write, and retryable

Headers = list[tuple[str, str]]


class ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.x we can forward safely."""


@dataclass
class Head:
    """A parsed request or response head; `first_line` parts are kept as received."""

    first: str
    second: str
    third: str
    headers: Headers
    chunked: bool
    content_length: int | None
    connection_tokens: frozenset[str]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def parse_head(raw: bytes) -> Head:
    """Parse a head that ends with CRLF CRLF; raises ProtocolError for anything ambiguous."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    if any("\n" in line or "\r" in line or "\x00" in line for line in lines):
        raise ProtocolError("bare CR, LF or NUL in the head")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2:
        raise ProtocolError(f"malformed start line {lines[0][:100]!r}")
    if len(parts) == 2:
        parts.append("")
    headers: Headers = []
    chunked = False
    content_length: int | None = None
    connection_tokens: set[str] = set()
    for line in lines[1:]:
        if not line:
            continue
        name, separator, value = line.partition(":")
        if not separator or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line[:100]!r}")
        value = value.strip()
        lowered = name.lower()
        if lowered == "content-length":
            if not value.isdigit():
                raise ProtocolError(f"bad Content-Length {value[:40]!r}")
            if content_length is not None and content_length != int(value):
                raise ProtocolError("conflicting Content-Length headers")
            content_length = int(value)
        elif lowered == "transfer-encoding":
            codings = [coding.strip().lower() for coding in value.split(",")]
            if codings[-1] != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {value[:40]!r}")
            chunked = True
        elif lowered == "connection":
            connection_tokens.update(token.strip().lower() for token in value.split(","))
        headers.append((name, value))
    if chunked:
        content_length = None  # RFC 9112 section 6.3: chunked wins, and the length is dropped
    return Head(parts[0], parts[1], parts[2], headers, chunked, content_length, frozenset(connection_tokens))


def forwardable(headers: Headers, connection_tokens: frozenset[str], also_drop: frozenset[str]) -> Headers:
    """Drop hop-by-hop headers, those the Connection header names, and `also_drop`."""
    return [
        (name, value)
        for name, value in headers
        if (lowered := name.lower()) not in HOP_BY_HOP and lowered not in connection_tokens and lowered not in also_drop
    ]


def serialize(first_line: str, headers: Headers) -> bytes:
    lines = [first_line, *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def copy_exactly(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int, timeout: float | None = None
) -> None:
    """Copy `length` body bytes, waiting for the receiver between pieces (back-pressure); `timeout`
    bounds each wait, so a peer that stalls mid-body cannot hold the request in flight for ever."""
    remaining = length
    while remaining > 0:
        async with asyncio.timeout(timeout):
            piece = await reader.read(min(COPY_SIZE, remaining))
        if not piece:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(piece)
        writer.write(piece)
        async with asyncio.timeout(timeout):
            await writer.drain()


async def copy_chunked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep_framing: bool, timeout: float | None = None
) -> None:
    """Copy a chunked body; `keep_framing=False` strips the chunking (for HTTP/1.0 receivers)."""
    while True:
        async with asyncio.timeout(timeout):
            size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as error:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from error
        if keep_framing:
            writer.write(size_line)
        if size == 0:
            while True:  # trailers, then the empty line
                async with asyncio.timeout(timeout):
                    trailer = await reader.readuntil(b"\r\n")
                if keep_framing:
                    writer.write(trailer)
                if trailer == b"\r\n":
                    async with asyncio.timeout(timeout):
                        await writer.drain()
                    return
        await copy_exactly(reader, writer, size, timeout)
        async with asyncio.timeout(timeout):
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
        if keep_framing:
            writer.write(b"\r\n")


async def copy_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float | None = None
) -> None:
    while True:
        async with asyncio.timeout(timeout):
            piece = await reader.read(COPY_SIZE)
        if not piece:
            return
        writer.write(piece)
        async with asyncio.timeout(timeout):
            await writer.drain()


# The plain case, recognised without a full parse (see fast.py).

FAST_REQUEST_HEADERS = re.compile(
    rb"\r\n(connection|keep-alive|proxy-[^:\r]*|te|trailer|transfer-encoding|upgrade|expect|x-forwarded-[^:\r]*"
    rb"|content-length|host)[ \t]*:[ \t]*([^\r]*)",
    re.IGNORECASE,
)
FAST_RESPONSE_HEADERS = re.compile(
    rb"\r\n(connection|keep-alive|proxy-[^:\r]*|trailer|transfer-encoding|upgrade|content-length)[ \t]*:[ \t]*([^\r]*)",
    re.IGNORECASE,
)


def fast_request(raw_head: bytes, client_address: str) -> tuple[bytes, bytes, int] | None:
    """For a plain HTTP/1.1 request (no hop-by-hop, forwarding or framing headers but Host and a
    small Content-Length), the head to send upstream without a full parse; None means take the
    careful path."""
    if raw_head.count(b"\n") != raw_head.count(b"\r\n") or b"\n " in raw_head or b"\n\t" in raw_head:
        return None  # bare line feeds or folded lines: the careful parser rejects them
    request_line = raw_head[: raw_head.find(b"\r\n")]
    if not request_line.endswith(b" HTTP/1.1") or request_line.count(b" ") != 2:
        return None
    content_length = -1
    host = None
    for name, value in FAST_REQUEST_HEADERS.findall(raw_head):
        lowered = name.lower()
        if lowered == b"host" and host is None:
            host = value.rstrip()
        elif lowered == b"content-length" and content_length < 0 and value.rstrip().isdigit():
            content_length = int(value)
        elif lowered == b"connection" and value.rstrip().lower() == b"keep-alive":
            continue  # what browsers send; the upstream connection is kept alive too
        else:
            return None
    if host is None or content_length > BUFFERED_BODY_LIMIT:
        return None
    forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\n\r\n" % (
        client_address.encode(),
        host,
    )
    return request_line[: request_line.find(b" ")], raw_head[:-2] + forwarded, max(content_length, 0)


def fast_response_length(raw_response: bytes, method: bytes) -> int | None:
    """The body length of a plain HTTP/1.1 response that can pass through unchanged, else None."""
    if not raw_response.startswith(b"HTTP/1.1 ") or raw_response[9:10] not in (b"2", b"3", b"4", b"5"):
        return None
    if method == b"HEAD" or raw_response[9:12] in (b"204", b"304"):
        return None
    length = None
    for name, value in FAST_RESPONSE_HEADERS.findall(raw_response):
        lowered = name.lower()
        # "Connection: keep-alive" is hop-by-hop but says what is true of the client connection too.
        if lowered == b"connection" and value.rstrip().lower() == b"keep-alive":
            continue
        if lowered != b"content-length" or length is not None or not value.rstrip().isdigit():
            return None
        length = int(value)
    return length if length is not None and length <= BUFFERED_BODY_LIMIT else None
