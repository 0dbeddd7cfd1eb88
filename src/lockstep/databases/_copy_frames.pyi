"""The COPY text inside a pg_dump custom-format data block (C extension, _copy_frames.c)."""

def unframe(data: bytes, position: int, int_size: int, remaining: int) -> tuple[bytes, int, int, bool]:
    """Equal to `copy_frames.unframe_in_python`; the GIL is released while copying."""
