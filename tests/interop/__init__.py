"""Interoperability with the real restic 0.14 binary, in both directions.

The helpers here describe a restored directory tree in a form two trees can be compared by, and
reach into a repository through restic's own commands, so that a test's verdict never depends on
lockstep's reading code when the question is whether restic agrees.
"""

from __future__ import annotations

import json
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Completed, run_lockstep, run_restic


@dataclass(frozen=True)
class Entry:
    """What a restore must reproduce for one path: kind, permission bits, bytes and file mtime."""

    kind: str
    permissions: int
    content: bytes  # file bytes or symlink target; empty for directories
    mtime_ns: int | None  # files only: directory mtimes change when anything is created in them


def describe_tree(root: Path) -> dict[bytes, Entry]:
    """Every path below `root` (raw bytes, relative) mapped to what a faithful restore keeps."""
    entries: dict[bytes, Entry] = {}
    base = os.fsencode(root)

    def visit(directory: bytes, relative: bytes) -> None:
        for entry in os.scandir(directory):
            path = os.path.join(directory, entry.name)
            name = os.path.join(relative, entry.name) if relative else entry.name
            info = os.lstat(path)
            permissions = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entries[name] = Entry("symlink", 0, os.readlink(path), None)
            elif stat.S_ISDIR(info.st_mode):
                entries[name] = Entry("dir", permissions, b"", None)
                visit(path, name)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    entries[name] = Entry("file", permissions, handle.read(), info.st_mtime_ns)
            else:
                entries[name] = Entry(f"other {stat.S_IFMT(info.st_mode):o}", permissions, b"", None)

    visit(base, b"")
    return entries


def restored_copy(target: Path, source: Path) -> Path:
    """Where a restore of a backup of absolute path `source` puts it below `target`."""
    return target / source.relative_to(source.anchor)


def mixed_data(size: int, seed: int = 1) -> bytes:
    """Half incompressible, half repetitive: exercises zstd frames of both kinds."""
    generator = random.Random(seed)
    half = size // 2
    repetitive = (b"INSERT INTO orders VALUES (42, 'lockstep', 3.14);\n" * (size // 50 + 1))[: size - half]
    return generator.randbytes(half) + repetitive


def restic_environment(lockstep_environment: dict[str, str]) -> dict[str, str]:
    """restic's view of the same repository: the same location string and S3 credentials."""
    environment = {key: value for key, value in lockstep_environment.items() if not key.startswith("LOCKSTEP_")}
    environment["RESTIC_REPOSITORY"] = lockstep_environment["LOCKSTEP_REPOSITORY"]
    return environment


def restic(
    environment: dict[str, str],
    args: list[str],
    input: bytes | None = None,
    extra_environment: dict[str, str] | None = None,
) -> Completed:
    """Run restic against the repository in `environment` and fail loudly when it fails."""
    completed = run_restic(
        environment["LOCKSTEP_REPOSITORY"],
        args,
        env={**restic_environment(environment), **(extra_environment or {})},
        input=input,
        timeout=300,
    )
    assert completed.returncode == 0, f"restic {' '.join(args)} failed ({completed.returncode}):\n{completed.err}"
    return completed


def lockstep(environment: dict[str, str], args: list[str], input: bytes | None = None) -> Completed:
    """Run the lockstep CLI against the repository in `environment` and fail loudly when it fails."""
    completed = run_lockstep(args, env=environment, input=input)
    assert completed.returncode == 0, f"lockstep {' '.join(args)} failed ({completed.returncode}):\n{completed.err}"
    return completed


def restic_json_lines(completed: Completed) -> list[dict[str, Any]]:
    """restic's --json output of commands that print one JSON object per line."""
    return [json.loads(line) for line in completed.out.splitlines() if line.startswith("{")]


def restic_backup_summary(completed: Completed) -> dict[str, Any]:
    """The final `summary` message of `restic backup --json`."""
    summaries = [line for line in restic_json_lines(completed) if line.get("message_type") == "summary"]
    assert len(summaries) == 1, completed.out
    return summaries[0]


def restic_snapshots(environment: dict[str, str]) -> list[dict[str, Any]]:
    """The repository's snapshots as restic decodes them."""
    snapshots: list[dict[str, Any]] = json.loads(restic(environment, ["snapshots", "--json"]).out)
    return snapshots


def restic_tree(environment: dict[str, str], tree_id: str) -> bytes:
    """A tree blob's exact bytes as restic decrypts and decompresses them."""
    return restic(environment, ["cat", "blob", tree_id]).stdout


def subtree_id(environment: dict[str, str], tree_id: str, path: Path | str) -> str:
    """Follow `path` (relative, `/`-separated) from tree `tree_id` using restic's view of the trees."""
    for part in str(path).strip("/").split("/"):
        if not part:
            continue
        nodes = json.loads(restic_tree(environment, tree_id))["nodes"]
        matches = [node for node in nodes if node["name"] == part]
        assert len(matches) == 1, f"{part!r} not found in tree {tree_id[:8]}: {[node['name'] for node in nodes]}"
        tree_id = matches[0]["subtree"]
    return tree_id


def lockstep_backup_summary(completed: Completed) -> dict[str, Any]:
    """The summary `lockstep repo backup --json` prints."""
    summary: dict[str, Any] = json.loads(completed.out.strip().splitlines()[-1])
    assert summary["message_type"] == "summary", completed.out
    return summary


def listed_path(path: bytes) -> str:
    """How a listing that decodes names leniently shows a raw path (invalid UTF-8 as U+FFFD)."""
    return path.decode("utf-8", "replace")
