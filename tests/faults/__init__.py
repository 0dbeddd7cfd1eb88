"""Fault injection: killed processes, bad input, full disks, and secrets that must not leak.

Helpers shared by the fault tests live here so each test file reads as the scenario it checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Completed, missing


def _is_step_event(line: str) -> bool:
    """A JSON-lines progress event (commands log their steps as JSON when stderr is no terminal)."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and "event" in event


def assert_clean_error(result: Completed, exit_code: int, *phrases: str) -> str:
    """The command failed with `exit_code` and exactly one `lockstep: error:` line on stderr
    containing every phrase (case-insensitive) and no traceback; returns that line.

    Step events (JSON lines) may come before it; nothing else may."""
    assert result.returncode == exit_code, f"exit {result.returncode}, expected {exit_code}; stderr: {result.err}"
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.strip().splitlines() if not _is_step_event(line)]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {result.err!r}"
    line = lines[0]
    assert line.startswith("lockstep: error: "), line
    for phrase in phrases:
        assert phrase.lower() in line.lower(), f"{phrase!r} not in {line!r}"
    return line


def repository_files(root: Path) -> dict[str, int]:
    """Every file under a repository directory (hidden temporaries included) with its size.

    Called while a backup still runs, too: a temporary file listed and then renamed into its pack
    before it was measured is skipped (the next look sees the pack)."""
    files: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        try:
            if path.is_file():
                files[str(path.relative_to(root))] = path.stat().st_size
        except FileNotFoundError:
            continue
    return files


def is_storage_name(name: str) -> bool:
    """A name restic reads as a repository file: 64 lowercase hex characters."""
    return len(name) == 64 and all(character in "0123456789abcdef" for character in name)


@contextmanager
def tmpfs(mount_point: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount_point` for the `with` block (needs root).

    Tests run as root, where file modes do not stop writes; a real size limit or a read-only
    mount is the only honest way to make the kernel refuse them."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        missing("mount/umount are not installed (util-linux)")
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        missing(f"cannot mount a tmpfs at {mount_point} (needs root): {mounted.stderr.decode(errors='replace')}")
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def remount(mount_point: Path, options: str) -> None:
    """Change a mounted tmpfs's options in place (e.g. `size=64m`), keeping its files."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], capture_output=True, check=True)
