"""Go's encodings of names, strings, times and file modes, as restic 0.14 writes them (§9)."""

from __future__ import annotations

import stat

import pytest

from lockstep.repository.gojson import (
    MODE_CHAR_DEVICE,
    MODE_DEVICE,
    MODE_DIR,
    MODE_NAMED_PIPE,
    MODE_SETGID,
    MODE_SETUID,
    MODE_SOCKET,
    MODE_STICKY,
    MODE_SYMLINK,
    format_time_ns,
    go_file_mode,
    go_json,
    go_string,
    parse_time_ns,
    quote_name,
    unix_permissions,
    unquote_name,
)

# raw name -> strconv.Quote body, as restic 0.14 stores it (§9.3; verified there against restic).
QUOTED_NAMES = {
    b'quote"name': 'quote\\"name',
    b"back\\slash": "back\\\\slash",
    b"new\nline": "new\\nline",
    b"tab\tname": "tab\\tname",
    "café 😀".encode(): "café 😀",
    "\u00a0nbsp".encode(): "\\u00a0nbsp",
    "\u2028sep".encode(): "\\u2028sep",
    b"del\x7f": "del\\x7f",
    b"<&>": "<&>",
    b"UPPER": "UPPER",
    b"lower": "lower",
    b"bytes-\xff\xfe": "bytes-\\xff\\xfe",
    b"\xff": "\\xff",
    b"bell\x07back\x08feed\x0creturn\rvtab\x0b": "bell\\aback\\bfeed\\freturn\\rvtab\\v",
    b"nul\x00esc\x1b": "nul\\x00esc\\x1b",
    b"single'quote": "single'quote",
    b"space and ~": "space and ~",
    "soft\u00adhyphen".encode(): "soft\\u00adhyphen",  # Cf: not printable for Go
    "tag\U000e0001".encode(): "tag\\U000e0001",  # non-printable above U+FFFF
    "replacement\ufffd".encode(): "replacement\ufffd",  # a valid, printable U+FFFD stays
    b"truncated\xe2\x82": "truncated\\xe2\\x82",  # incomplete UTF-8 sequence
    b"overlong\xc0\x80": "overlong\\xc0\\x80",  # overlong encoding of NUL is invalid UTF-8
    b"surrogate\xed\xa0\x80": "surrogate\\xed\\xa0\\x80",  # UTF-8-encoded surrogate is invalid
    "日本語".encode(): "日本語",
}


@pytest.mark.parametrize(("raw", "quoted"), QUOTED_NAMES.items(), ids=[repr(name) for name in QUOTED_NAMES])
def test_quote_name_matches_go_strconv_quote(raw: bytes, quoted: str) -> None:
    assert quote_name(raw) == quoted


@pytest.mark.parametrize("raw", QUOTED_NAMES, ids=[repr(name) for name in QUOTED_NAMES])
def test_unquote_name_reverses_quote_name(raw: bytes) -> None:
    assert unquote_name(quote_name(raw)) == raw


def test_unquote_name_reads_escapes_quote_name_never_writes() -> None:
    """Go's Unquote also accepts octal, \\' and \\u escapes for printable characters."""
    assert unquote_name("\\101\\'\\u00e9\\U0001f600") == "A'é😀".encode()


def test_unquote_name_rejects_an_unknown_escape() -> None:
    with pytest.raises(ValueError, match="invalid escape"):
        unquote_name("bad\\q")


def test_raw_name_order_is_not_the_quoted_name_order() -> None:
    """Trees are sorted on raw names, which is not the order of the quoted forms."""
    raw = sorted(QUOTED_NAMES)
    assert raw.index(b"UPPER") < raw.index(b"lower") < raw.index(b"\xff")
    assert sorted(QUOTED_NAMES.values()) != [QUOTED_NAMES[name] for name in raw]


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("<&>", '"\\u003c\\u0026\\u003e"'),
        ("a\u2028b\u2029c", '"a\\u2028b\\u2029c"'),
        ('quote"back\\', '"quote\\"back\\\\"'),
        ("\n\r\t", '"\\n\\r\\t"'),
        ("\x08\x0c\x01\x1f", '"\\u0008\\u000c\\u0001\\u001f"'),  # Go < 1.22: no short \b, \f
        ("\x7f", '"\x7f"'),  # DEL is not escaped by encoding/json
        ("café 😀", '"café 😀"'),  # non-ASCII stays raw UTF-8
        ("lone\udcff", '"lone\ufffd"'),  # invalid UTF-8 becomes U+FFFD
        ("back\\\\slash", '"back\\\\\\\\slash"'),  # §9.3: a quoted name is escaped again
    ],
)
def test_go_string_escapes_like_encoding_json(value: str, encoded: str) -> None:
    assert go_string(value) == encoded


def test_go_json_is_compact_and_keeps_key_order() -> None:
    document = {"b": 1, "a": [True, False, None], "c": {"<": "x"}, "d": [], "e": -3}
    assert go_json(document) == '{"b":1,"a":[true,false,null],"c":{"\\u003c":"x"},"d":[],"e":-3}'


def test_go_json_refuses_what_go_would_not_encode_the_same() -> None:
    with pytest.raises(TypeError):
        go_json(b"bytes")


@pytest.mark.parametrize(
    ("nanoseconds", "offset", "text"),
    [
        (1_600_000_000_123_456_789, 0, "2020-09-13T12:26:40.123456789Z"),
        (1_600_000_000_120_000_000, 0, "2020-09-13T12:26:40.12Z"),  # trailing zeros dropped
        (1_600_000_000_000_000_100, 0, "2020-09-13T12:26:40.0000001Z"),
        (1_600_000_000_000_000_000, 0, "2020-09-13T12:26:40Z"),  # zero fraction dropped entirely
        (1_600_000_000_500_000_000, 3600, "2020-09-13T13:26:40.5+01:00"),
        (1_600_000_000_000_000_001, -5 * 3600 - 30 * 60, "2020-09-13T06:56:40.000000001-05:30"),
        (0, 0, "1970-01-01T00:00:00Z"),
        (-1, 0, "1969-12-31T23:59:59.999999999Z"),
        (1_795_312_948_035_740_340, 0, "2026-11-22T02:02:28.03574034Z"),  # restic's sample (§10)
    ],
)
def test_format_time_ns_matches_go_time_marshal(nanoseconds: int, offset: int, text: str) -> None:
    assert format_time_ns(nanoseconds, offset) == text
    assert parse_time_ns(text) == nanoseconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-30_628_713_600, "0999-06-01T00:00:00Z"),  # restic 0.14 wrote this for a tmpfs file from 999
        (-62_135_596_800, "0001-01-01T00:00:00Z"),  # Go's zero time: four digits, not "1-01-01"
        (400_000_000_000, "9999-06-30T15:06:40Z"),  # year 12645: restic 0.14 wrote this (FixTime)
        (253_402_300_800, "9999-01-01T00:00:00Z"),  # the first second of year 10000
        (-62_201_779_200, "0000-11-27T00:00:00Z"),  # year -1 becomes year 0
    ],
)
def test_format_time_ns_pads_and_clamps_years_like_restic(seconds: int, text: str) -> None:
    """Go only marshals years 0-9999 (four digits); restic moves other years into that range."""
    assert format_time_ns(seconds * 1_000_000_000) == text


def test_format_time_ns_moves_29_february_like_go_adddate() -> None:
    """12000 is a leap year, 9999 is not: Go's AddDate turns 29 February into 1 March."""
    seconds = (_days_since_epoch(12000, 2, 29)) * 86_400
    assert format_time_ns(seconds * 1_000_000_000) == "9999-03-01T00:00:00Z"


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Proleptic Gregorian day count, independent of the code under test (400-year cycles)."""
    cycles, year_in_cycle = divmod(year - 2000, 400)
    days = cycles * 146_097
    for current in range(2000, 2000 + year_in_cycle):
        days += 366 if current % 4 == 0 and (current % 100 != 0 or current % 400 == 0) else 365
    month_lengths = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31]
    return 10_957 + days + sum(month_lengths[: month - 1]) + day - 1


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("2020-09-13T13:26:40.123456789+01:00", 1_600_000_000_123_456_789),
        ("2020-09-13T07:26:40-05:00", 1_600_000_000_000_000_000),
        ("2020-09-13T12:26:40.1z", 1_600_000_000_100_000_000),
        ("0001-01-01T00:00:00Z", -62_135_596_800 * 1_000_000_000),  # Go's zero time
        ("0000-11-27T00:00:00Z", -62_138_620_800 * 1_000_000_000),  # year 0: datetime has none
        ("0999-06-01T00:00:00Z", -30_628_713_600 * 1_000_000_000),
        ("9999-06-30T15:06:40.000000001Z", 253_386_371_200 * 1_000_000_000 + 1),
    ],
)
def test_parse_time_ns_keeps_every_nanosecond_and_honours_offsets(text: str, nanoseconds: int) -> None:
    assert parse_time_ns(text) == nanoseconds


@pytest.mark.parametrize(
    "text", ["2020-09-13T12:26:40", "1-01-01T00:00:00Z", "2020-13-01T00:00:00Z", "2020-09-13 12:26:40Z", ""]
)
def test_parse_time_ns_refuses_what_is_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_ns(text)


@pytest.mark.parametrize(
    ("st_mode", "go_mode"),
    [
        (stat.S_IFREG | 0o644, 420),
        (stat.S_IFDIR | 0o755, 2147484141),
        (stat.S_IFDIR | 0o1777, 2148532735),  # sticky directory, as in restic's sample
        (stat.S_IFLNK | 0o777, 134218239),
        (stat.S_IFREG | 0o4755, MODE_SETUID | 0o755),
        (stat.S_IFREG | 0o2750, MODE_SETGID | 0o750),
        (stat.S_IFBLK | 0o660, MODE_DEVICE | 0o660),
        (stat.S_IFCHR | 0o666, MODE_DEVICE | MODE_CHAR_DEVICE | 0o666),
        (stat.S_IFIFO | 0o600, MODE_NAMED_PIPE | 0o600),
        (stat.S_IFSOCK | 0o755, MODE_SOCKET | 0o755),
    ],
)
def test_go_file_mode_uses_go_bits(st_mode: int, go_mode: int) -> None:
    assert go_file_mode(st_mode) == go_mode
    assert unix_permissions(go_mode) == stat.S_IMODE(st_mode)


def test_go_mode_bits_have_gos_values() -> None:
    assert (MODE_DIR, MODE_SYMLINK, MODE_DEVICE, MODE_NAMED_PIPE, MODE_SOCKET) == (
        1 << 31,
        1 << 27,
        1 << 26,
        1 << 25,
        1 << 24,
    )
    assert (MODE_SETUID, MODE_SETGID, MODE_CHAR_DEVICE, MODE_STICKY) == (1 << 23, 1 << 22, 1 << 21, 1 << 20)
