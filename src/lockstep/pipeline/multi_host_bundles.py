"""The `git bundle` files a multi-host deploy gives the hosts that lack the commit.

A bundle of the commit and its whole history is what any host can fetch, but for a project with a
long history it is slow to make and to send on every deploy to every host. A host that has an
earlier commit (the one its last deploy fetched, or its checkout's HEAD) needs only what is new
since: `git bundle create FILE REF ^BASE`. Each bundle is made once per set of bases, and the
whole-history one only if a host needs it. The git commands run in a thread, so a long bundle
does not stall the SSH sessions of the other hosts; a lock keeps them from sharing the
temporary ref at the same time.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lockstep.errors import UsageError
from lockstep.pipeline.code import SHORT_COMMIT_LENGTH

# The ref the bundle carries the commit under; the host fetches it into its DEPLOYED_REF.
INCOMING_REF = "refs/lockstep/deploy"
# What a host's answer must look like before it goes into a git command here (SHA-1 or SHA-256).
_OBJECT_NAME = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class Bundle:
    """One bundle file; `bases` are the commits it leaves out with their history (none: the whole history)."""

    path: Path
    bases: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def since(self) -> str:
        """`def456abc012`, `def456abc012 and 0123456789ab`: what the host had."""
        return " and ".join(base[:SHORT_COMMIT_LENGTH] for base in self.bases)


def object_names(text: str) -> list[str]:
    """The commit names in a host's answer, in order and once each; anything else is dropped."""
    names: list[str] = []
    for line in text.splitlines():
        name = line.strip().lower()
        if _OBJECT_NAME.match(name) and name not in names:
            names.append(name)
    return names


def byte_size(count: int) -> str:
    """`812 B`, `12 KiB`, `3.1 MiB`: a bundle's size in the deploy's progress."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    if unit == "B":
        return f"{count} B"
    return f"{size:.1f} {unit}" if size < 10 else f"{size:.0f} {unit}"


class CommitBundles:
    """The bundles of `commit` from the work tree `work_tree`, made in `directory` when first asked for."""

    def __init__(self, work_tree: Path, commit: str, directory: Path) -> None:
        self.work_tree = work_tree
        self.commit = commit
        self.directory = directory
        self._made: dict[tuple[str, ...], Bundle] = {}
        self._making = asyncio.Lock()

    async def whole_history(self) -> Bundle:
        """The commit with its whole history: any host can fetch it. Raises UsageError if git cannot make it."""
        return await self._bundle(())

    async def since(self, candidates: list[str]) -> Bundle | None:
        """Only what is new since those of `candidates` (a host's commits) that are ancestors of the
        commit here; None when none is, or git cannot make it (the whole history will do)."""
        bases = await asyncio.to_thread(self._bases, candidates)
        if not bases:
            return None
        try:
            return await self._bundle(bases)
        except UsageError:
            return None

    def _git(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", str(self.work_tree), *arguments], check=False, capture_output=True)

    def _bases(self, candidates: list[str]) -> tuple[str, ...]:
        """The candidates this machine has and the commit descends from, without one that another
        of them descends from (it adds nothing to the exclusion)."""
        ancestors = [name for name in candidates if name != self.commit and self._is_ancestor(name, self.commit)]
        return tuple(sorted(base for base in ancestors if not self._superseded(base, ancestors)))

    def _superseded(self, base: str, bases: list[str]) -> bool:
        return any(self._is_ancestor(base, other) for other in bases if other != base)

    def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Exit 0: it is; 1: it is not; 128: this machine lacks one of them."""
        return self._git("merge-base", "--is-ancestor", ancestor, descendant).returncode == 0

    async def _bundle(self, bases: tuple[str, ...]) -> Bundle:
        async with self._making:
            if bases not in self._made:
                name = "deploy.bundle" if not bases else f"since-{len(self._made)}.bundle"
                path = self.directory / name
                await asyncio.to_thread(self._create, path, bases)
                self._made[bases] = Bundle(path, bases)
            return self._made[bases]

    def _create(self, path: Path, bases: tuple[str, ...]) -> None:
        """`git bundle` needs a ref to name the commit by, so a temporary one."""
        try:
            updated = self._git("update-ref", INCOMING_REF, self.commit)
            created = (
                updated
                if updated.returncode != 0
                else self._git("bundle", "create", str(path), INCOMING_REF, *(f"^{base}" for base in bases))
            )
        finally:
            self._git("update-ref", "-d", INCOMING_REF)
        if created.returncode != 0:
            reason = created.stderr.decode(errors="replace")
            raise UsageError(f"could not bundle commit {self.commit[:SHORT_COMMIT_LENGTH]}: {reason}")
