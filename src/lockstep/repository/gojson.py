"""Encode JSON, names, times and file modes the way restic (Go) does.

Tree blob IDs hash the exact JSON bytes, so matching Go's encoder byte for byte lets a tree
written by lockstep deduplicate with the same tree written by restic (restic-format.md §9).
"""

from __future__ import annotations

import json
import re
import stat
import unicodedata
from typing import Any

# --- Go strconv.Quote for node names (§9.3) ----------------------------------------------

_SHORT_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def _is_go_printable(character: str) -> bool:
    if character == " ":
        return True
    return unicodedata.category(character)[0] in "LMNPS"


def quote_name(name: bytes) -> str:
    """A file name as restic stores it: Go's strconv.Quote without the outer quotes."""
    parts: list[str] = []
    index = 0
    length = len(name)
    while index < length:
        byte = name[index]
        if byte < 0x80:
            if byte == 0x22:
                parts.append('\\"')
            elif byte == 0x5C:
                parts.append("\\\\")
            elif byte in _SHORT_ESCAPES:
                parts.append(_SHORT_ESCAPES[byte])
            elif byte < 0x20 or byte == 0x7F:
                parts.append(f"\\x{byte:02x}")
            else:
                parts.append(chr(byte))
            index += 1
            continue
        character, width = _decode_one_utf8(name, index)
        if character is None:
            parts.append(f"\\x{byte:02x}")
            index += 1
            continue
        index += width
        if _is_go_printable(character):
            parts.append(character)
        elif ord(character) < 0x10000:
            parts.append(f"\\u{ord(character):04x}")
        else:
            parts.append(f"\\U{ord(character):08x}")
    return "".join(parts)


def _decode_one_utf8(data: bytes, start: int) -> tuple[str | None, int]:
    first = data[start]
    if first >= 0xF0:
        width = 4
    elif first >= 0xE0:
        width = 3
    elif first >= 0xC0:
        width = 2
    else:
        return None, 1
    try:
        return data[start : start + width].decode("utf-8"), width
    except UnicodeDecodeError:
        return None, 1


_UNQUOTE_SIMPLE = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 0x5C, '"': 0x22, "'": 0x27}


def unquote_name(quoted: str) -> bytes:
    """Reverse quote_name: Go's strconv.Unquote of `"` + quoted + `"`, as raw bytes."""
    if "\\" not in quoted:
        return quoted.encode("utf-8", "surrogateescape")
    output = bytearray()
    index = 0
    length = len(quoted)
    while index < length:
        character = quoted[index]
        if character != "\\":
            output += character.encode("utf-8", "surrogateescape")
            index += 1
            continue
        code = quoted[index + 1]
        if code in _UNQUOTE_SIMPLE:
            output.append(_UNQUOTE_SIMPLE[code])
            index += 2
        elif code == "x":
            output.append(int(quoted[index + 2 : index + 4], 16))
            index += 4
        elif code == "u":
            output += chr(int(quoted[index + 2 : index + 6], 16)).encode("utf-8", "surrogatepass")
            index += 6
        elif code == "U":
            output += chr(int(quoted[index + 2 : index + 10], 16)).encode("utf-8", "surrogatepass")
            index += 10
        elif code in "01234567":
            output.append(int(quoted[index + 1 : index + 4], 8))
            index += 4
        else:
            raise ValueError(f"invalid escape in node name: {quoted!r}")
    return bytes(output)


# --- Go encoding/json strings (§9.4) ------------------------------------------------------

_GO_STRING_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_string(value: str) -> str:
    """A JSON string literal exactly as Go's encoding/json (before 1.22) writes it."""
    parts = ['"']
    for character in value:
        escaped = _GO_STRING_ESCAPES.get(character)
        if escaped is not None:
            parts.append(escaped)
        elif ord(character) < 0x20:
            parts.append(f"\\u{ord(character):04x}")
        elif 0xD800 <= ord(character) <= 0xDFFF:  # lone surrogate: Go writes U+FFFD
            parts.append("\ufffd")
        else:
            parts.append(character)
    parts.append('"')
    return "".join(parts)


def go_json(value: Any) -> str:
    """Compact JSON with Go's string escaping; dict key order is kept (struct order)."""
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_string(key)}:{go_json(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    if isinstance(value, float):
        return json.dumps(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# --- Go time.Time (§9.6) ------------------------------------------------------------------

_SECONDS_PER_DAY = 86_400


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01, for any year (proleptic Gregorian).

    datetime only covers years 1-9999, but file times can lie outside (tmpfs, btrfs), and
    Go writes years below 1000 with four digits."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (the inverse of _civil_from_days)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def format_time_ns(nanoseconds: int, utc_offset_seconds: int = 0) -> str:
    """RFC 3339 with nanoseconds, trailing zeros dropped, as Go's time.Time marshals it.

    Like restic's FixTime, a year outside 0-9999 is moved into that range (only the year
    changes); Go cannot marshal such a time, and restic would refuse to back the file up."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    days, second_of_day = divmod(seconds + utc_offset_seconds, _SECONDS_PER_DAY)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        year = min(max(year, 0), 9999)
        if (month, day) == (2, 29) and not _is_leap(year):
            month, day = 3, 1  # Go's AddDate normalises 29 February of a common year
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    if utc_offset_seconds == 0:
        return text + "Z"
    sign = "+" if utc_offset_seconds > 0 else "-"
    hours, minutes = divmod(abs(utc_offset_seconds) // 60, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_time_ns(text: str) -> int:
    """Parse an RFC 3339 time with up to nine fractional digits into nanoseconds since the epoch.

    Python's datetime keeps only microseconds and no year 0, so the text is parsed by hand.
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time with a zone: {text!r}")
    year, month, day, hour, minute, second = (int(match.group(number)) for number in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        raise ValueError(f"time out of range: {text!r}")
    fraction_ns = int(((match.group(7) or "") + "000000000")[:9])
    offset_seconds = 0
    if match.group(9):
        offset_seconds = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        if match.group(9) == "-":
            offset_seconds = -offset_seconds
    seconds = _days_from_civil(year, month, day) * _SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
    return (seconds - offset_seconds) * 1_000_000_000 + fraction_ns


# --- Go os.FileMode (§9.5) ----------------------------------------------------------------

MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20


def go_file_mode(st_mode: int) -> int:
    """Translate a Unix st_mode into Go's os.FileMode bits."""
    mode = st_mode & 0o777
    if stat.S_ISDIR(st_mode):
        mode |= MODE_DIR
    elif stat.S_ISLNK(st_mode):
        mode |= MODE_SYMLINK
    elif stat.S_ISBLK(st_mode):
        mode |= MODE_DEVICE
    elif stat.S_ISCHR(st_mode):
        mode |= MODE_DEVICE | MODE_CHAR_DEVICE
    elif stat.S_ISFIFO(st_mode):
        mode |= MODE_NAMED_PIPE
    elif stat.S_ISSOCK(st_mode):
        mode |= MODE_SOCKET
    if st_mode & stat.S_ISUID:
        mode |= MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= MODE_STICKY
    return mode


def unix_permissions(go_mode: int) -> int:
    """The chmod() bits (permissions plus setuid/setgid/sticky) of a Go FileMode."""
    permissions = go_mode & 0o777
    if go_mode & MODE_SETUID:
        permissions |= stat.S_ISUID
    if go_mode & MODE_SETGID:
        permissions |= stat.S_ISGID
    if go_mode & MODE_STICKY:
        permissions |= stat.S_ISVTX
    return permissions


# What each node type adds to its mode in `restic ls -l` (restic's formatNode).
TYPE_MODE_BITS = {
    "dir": MODE_DIR,
    "symlink": MODE_SYMLINK,
    "dev": MODE_DEVICE,
    "chardev": MODE_DEVICE | MODE_CHAR_DEVICE,
    "fifo": MODE_NAMED_PIPE,
    "socket": MODE_SOCKET,
}


def go_mode_string(go_mode: int) -> str:
    """Go's FileMode.String(), as `restic ls -l` prints it: `-rw-r--r--`, `drwxr-xr-x`,
    `Lrwxrwxrwx`, `Dcrw-r--r--`, `prw-------`, `urwxr-xr-x` (setuid)."""
    letters = "dalTLDpSugct?"
    text = "".join(letter for index, letter in enumerate(letters) if go_mode & (1 << (31 - index)))
    return (text or "-") + "".join(
        letter if go_mode & (1 << (8 - index)) else "-" for index, letter in enumerate("rwxrwxrwx")
    )
