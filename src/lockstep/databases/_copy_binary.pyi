"""COPY text rows in PostgreSQL's binary COPY format (C extension, _copy_binary.c)."""

def convert(text: bytes, kinds: bytes) -> tuple[bytes, int]:
    """The whole rows of `text` in binary COPY form (no header or trailer) and their count;
    `kinds` has one letter per column (copy_binary.KIND_BY_TYPE). The GIL is released. A row it
    cannot read raises ValueError(its number within `text`, from 1; the reason, never the value)."""
