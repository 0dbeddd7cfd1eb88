"""The head of a pg_dump custom-format archive: its header and table of contents.

Read from the first bytes of a stream, so a restore can plan (which entries are schema, which
are table data it loads itself, which are left to pg_restore) before the data arrives. Only
what lockstep writes is understood: format versions 1.14 and 1.15, uncompressed; anything
else is "not understood" (None), and the caller falls back to plain pg_restore.
"""

from __future__ import annotations

import dataclasses
import mmap
import re
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg._encodings import pg2pyenc

# pg_backup_archiver.h: enum teSection.
SECTION_NONE = 1
SECTION_PRE_DATA = 2
SECTION_DATA = 3
SECTION_POST_DATA = 4
# pg_backup_custom.c: data offset flags and block types.
OFFSET_NOT_SET = 1
OFFSET_SET = 2
BLOCK_DATA = 1
BLOCK_LARGE_OBJECTS = 3
_SUPPORTED_VERSIONS = ((1, 14), (1, 15))
_CUSTOM_FORMAT = 1


class IncompleteHead(Exception):
    """The bytes end before the table of contents does: read more and try again."""


@dataclass(frozen=True)
class TocEntry:
    """One table-of-contents entry, as much of it as a restore plan needs."""

    dump_id: int
    had_data: bool  # pg_dump wrote a data block for it
    tag: str
    description: str  # "TABLE", "TABLE DATA", "SEQUENCE SET", "BLOBS", "INDEX", ...
    section: int
    definition: str
    copy_statement: str
    namespace: str
    tablespace: str
    offset_flag_position: int  # where the "data offset set?" byte sits (the offset follows it)
    offset_flag: int  # OFFSET_NOT_SET when pg_dump wrote to a pipe and could not seek back
    owner: str = ""  # the role that owned the object ("" for entries without one)
    dependencies: tuple[int, ...] = ()  # the dump IDs of the entries it depends on


@dataclass(frozen=True)
class DatabaseCollation:
    """How the dumped database sorts and classifies text (CREATE DATABASE's locale options)."""

    provider: str  # "libc" or "icu"
    collate: str | None
    ctype: str | None
    icu_locale: str | None


@dataclass(frozen=True)
class ArchiveHead:
    """The parsed header and table of contents, and where the data blocks start."""

    entries: list[TocEntry]
    end: int  # offset of the first byte after the table of contents
    int_size: int
    offset_size: int
    server_encoding: str = "UTF8"  # the dumped database's, as PostgreSQL names it
    codec: str = "utf-8"  # Python's name for it: the entries' text was decoded with it

    def encode(self, text: str) -> bytes:
        """`text` from an entry, as the bytes pg_dump wrote (the dump's encoding)."""
        return text.encode(self.codec, "surrogateescape")

    def database_collation(self) -> DatabaseCollation | None:
        """The dumped database's locale provider and locales, from its CREATE DATABASE entry."""
        definition = next((entry.definition for entry in self.entries if entry.description == "DATABASE"), None)
        if definition is None:
            return None

        def value(option: str) -> str | None:
            found = re.search(rf"(?<![\w]){option} = '((?:[^']|'')*)'", definition)
            return found[1].replace("''", "'") if found else None

        provider = re.search(r"\bLOCALE_PROVIDER = (libc|icu)\b", definition)
        locale = value("LOCALE")
        return DatabaseCollation(
            provider=provider[1] if provider else "libc",
            collate=value("LC_COLLATE") or locale,
            ctype=value("LC_CTYPE") or locale,
            icu_locale=value("ICU_LOCALE"),
        )

    def database_locale(self) -> str | None:
        """The dumped database's locale (LC_COLLATE), from its CREATE DATABASE entry."""
        for entry in self.entries:
            if entry.description == "DATABASE":
                found = re.search(r"\b(?:LOCALE|LC_COLLATE) = '((?:[^']|'')*)'", entry.definition)
                return found[1].replace("''", "'") if found else None
        return None


def parse_head(data: bytes | mmap.mmap) -> ArchiveHead | None:
    """The head of a custom-format archive; None if it is not one this parser understands.

    Raises IncompleteHead when `data` ends inside the head.
    """
    reader = ArchiveReader(data)
    if len(data) < 5:
        raise IncompleteHead
    if data[:5] != b"PGDMP":
        return None
    reader.position = 5
    version = (reader.byte(), reader.byte(), reader.byte())
    reader.int_size, reader.offset_size, archive_format = reader.byte(), reader.byte(), reader.byte()
    if version[:2] not in _SUPPORTED_VERSIONS or archive_format != _CUSTOM_FORMAT or reader.int_size > 8:
        return None
    compression = reader.byte() if version[:2] == (1, 15) else reader.integer()
    if compression != 0:
        return None
    for _ in range(7):  # the time of the dump
        reader.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        reader.string()
    entries: list[TocEntry] = []
    for _ in range(reader.integer()):
        dump_id = reader.integer()
        had_data = reader.integer() != 0
        reader.string()  # table OID
        reader.string()  # OID
        tag = reader.text()
        description = reader.text()
        section = reader.integer()
        definition = reader.text()
        reader.string()  # drop statement
        copy_statement = reader.text()
        namespace = reader.text()
        tablespace = reader.text()
        reader.string()  # access method
        owner = reader.text()
        reader.string()  # "false" (with OIDs)
        dependencies: list[int] = []
        while (dependency := reader.string()) is not None:  # dependencies, ended by a null string
            if dependency.isdigit():
                dependencies.append(int(dependency))
        offset_flag_position = reader.position
        offset_flag = reader.byte()
        reader.skip(reader.offset_size)
        entries.append(
            TocEntry(
                dump_id,
                had_data,
                tag,
                description,
                section,
                definition,
                copy_statement,
                namespace,
                tablespace,
                offset_flag_position,
                offset_flag,
                owner,
                tuple(dependencies),
            )
        )
    server_encoding = _dump_encoding(entries)
    codec = _codec(server_encoding)
    if codec != "utf-8":
        entries = [_decoded_as(entry, codec) for entry in entries]
    return ArchiveHead(entries, reader.position, reader.int_size, reader.offset_size, server_encoding, codec)


def _dump_encoding(entries: list[TocEntry]) -> str:
    """The ENCODING entry's (`SET client_encoding = 'LATIN1';`); UTF8 when there is none."""
    for entry in entries:
        if entry.description == "ENCODING" and (found := re.search(r"'([A-Za-z0-9_]+)'", entry.definition)):
            return found[1].upper()
    return "UTF8"


def _codec(server_encoding: str) -> str:
    """Python's codec for a PostgreSQL encoding. SQL_ASCII stores bytes as they came, so those
    stay bytes (surrogateescape) as they would under UTF-8."""
    if server_encoding in ("UTF8", "SQL_ASCII"):
        return "utf-8"
    try:
        return pg2pyenc(server_encoding.encode("ascii"))
    except psycopg.NotSupportedError:  # MULE_INTERNAL: Python has no codec for it
        return "utf-8"


def _decoded_as(entry: TocEntry, codec: str) -> TocEntry:
    """`entry` with its text decoded from the dump's encoding rather than from UTF-8: a LATIN1
    name whose bytes happen to be valid UTF-8 would otherwise name another table."""

    def decoded(text: str) -> str:
        return text.encode("utf-8", "surrogateescape").decode(codec, "surrogateescape")

    return dataclasses.replace(
        entry,
        tag=decoded(entry.tag),
        definition=decoded(entry.definition),
        copy_statement=decoded(entry.copy_statement),
        namespace=decoded(entry.namespace),
        tablespace=decoded(entry.tablespace),
        owner=decoded(entry.owner),
    )


def read_head(read: Callable[[int], bytes], first_read: int = 1 << 16) -> tuple[ArchiveHead | None, bytes]:
    """Read a stream until its head parses: (the head or None, every byte read so far)."""
    data = b""
    size = first_read
    while True:
        more = read(size)
        data += more
        try:
            return parse_head(data), data
        except IncompleteHead:
            if not more:
                return None, data
            size *= 2


class ArchiveReader:
    """pg_dump's integers (a sign byte, then `int_size` little-endian bytes) and strings."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.position = 0
        self.int_size = 4
        self.offset_size = 8

    def skip(self, count: int) -> None:
        self.position += count
        if self.position > len(self.data):
            raise IncompleteHead

    def byte(self) -> int:
        if self.position >= len(self.data):
            raise IncompleteHead
        value = self.data[self.position]
        self.position += 1
        return value

    def integer(self) -> int:
        sign = self.byte()
        end = self.position + self.int_size
        if end > len(self.data):
            raise IncompleteHead
        value = int.from_bytes(self.data[self.position : end], "little")
        self.position = end
        return -value if sign else value

    def string(self) -> bytes | None:
        length = self.integer()
        if length < 0:
            return None
        start = self.position
        self.skip(length)
        return self.data[start : self.position]

    def text(self) -> str:
        value = self.string()
        # Text in the dump's encoding, decoded as UTF-8 first (parse_head re-decodes it once the
        # ENCODING entry is known); surrogateescape keeps bytes that are not UTF-8, so
        # encode("utf-8", "surrogateescape") gives back exactly what pg_dump wrote.
        return "" if value is None else value.decode("utf-8", "surrogateescape")
