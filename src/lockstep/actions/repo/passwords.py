"""Passwords read from a file or a command, exactly as restic reads them.

restic (cmd/restic/global.go, internal/textfile) drops a UTF-8 byte order mark from a password
file, decodes a UTF-16 one, and trims **all** leading and trailing white space (Go's
strings.TrimSpace) from a file's content and from a password command's output. The same file
or command must give lockstep the same password, or a repository one tool created would not
open in the other. Bytes that are not UTF-8 are kept as they are (Go strings are bytes): they
travel as surrogate escapes and go back to the same bytes for scrypt.
"""

from __future__ import annotations

import codecs

# Go's unicode.IsSpace; Python's str.strip() also strips U+001C..U+001F, which Go keeps.
_GO_SPACE = (
    "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def go_trim_space(text: str) -> str:
    """strings.TrimSpace: white space removed from both ends."""
    return text.strip(_GO_SPACE)


def decode_text_file(data: bytes) -> str:
    """restic's textfile.Decode: no BOM or UTF-8 BOM → UTF-8 (any bytes kept); UTF-16 BOM → UTF-16."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith((codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)):
        return data.decode("utf-16", "replace")
    return data.decode("utf-8", "surrogateescape")


def password_from_file_bytes(data: bytes) -> str:
    """What restic makes of a --password-file's bytes."""
    return go_trim_space(decode_text_file(data))


def password_from_command_output(output: str) -> str:
    """What restic makes of a --password-command's standard output."""
    return go_trim_space(output)


def legacy_password(text: str) -> str:
    """What earlier lockstep versions used: only the trailing line endings removed. Tried after
    the restic form, so that a repository created with such a password keeps opening."""
    return text.rstrip("\r\n")
