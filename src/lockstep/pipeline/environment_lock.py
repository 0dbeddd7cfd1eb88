"""The environment lock: one deploy or rollback per environment at a time, for every deployer.

The lock is a document in the repository (`lockstep/projects/<project>/locks/<environment>`), so
deployers on different machines see each other, and projects sharing a repository (each with its
own `production`) do not lock each other out. Taking a free lock is one atomic create-if-absent. The lock
document itself is never rewritten: the holder's heartbeat goes to a separate document keyed by
the lock's ID, so a late heartbeat can never overwrite the lock of whoever took over.

A lock is stale when its process is gone from this host (same host name, boot and PID namespace),
or when it has sent no heartbeat for `stale_after` seconds (which also covers a reused PID; the
heartbeat age is read with our clock, so hosts' clocks must agree to well within stale_after).

Replacing a stale (or, with force, a live) lock is a takeover: the deployer first creates a claim
document for that lock ID (atomic, so one claimant wins), checks the lock is still the one it
judged, removes it and creates its own. Others who judged the same stale lock lose the claim, or
find a different lock once they get it, and never remove a lock they did not look at.

A lock taken by hand (`lockstep lock acquire -m MESSAGE`, Kamal's `lock acquire`: a maintenance
window, a migration run outside lockstep) has no process and no heartbeat, and is never stale:
it holds every deploy and rollback off until `lockstep lock release` (`--force` does not take
it: the release shows who took it and why). Versions before it judge it stale after `stale_after`.

Lockstep before per-project locks kept the lock at `lockstep/locks/<environment>` (the "old key"),
without a project. Such a lock may be any project's, so while it is live a deploy of every project's
environment of that name waits for it, as it would have: `acquire` looks at it once its own lock is
taken, and gives its own back. It is never taken over (not even with force, since it may be another
project's): a stale one is passed over, and `lockstep lock release` removes one. The other way round
cannot work: an older lockstep does not know the new key, so every deployer of a repository must
run a lockstep with per-project locks (multi-host deploys check the versions are the same).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from lockstep.errors import IntegrityError, LockstepError, RepositoryLocked, UsageError
from lockstep.process import process_alive
from lockstep.repository.documents import DocumentStore
from lockstep.repository.identity import current_user

LOCKS_DIRECTORY = "locks"
HEARTBEATS_DIRECTORY = "lock-heartbeats"
TAKEOVERS_DIRECTORY = "lock-takeovers"
DEFAULT_STALE_AFTER_SECONDS = 120.0
DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 15.0
# A takeover claim older than this belongs to a deployer that died mid-takeover; the next one may
# claim again. Far longer than a takeover takes (three small writes), so a slow one is not overtaken.
CLAIM_EXPIRES_AFTER_SECONDS = 60.0
_FIRST_POLL_DELAY_SECONDS = 0.1
_LONGEST_POLL_DELAY_SECONDS = 5.0
# The operation of a lock taken by hand (`lockstep lock acquire`): never stale.
MANUAL_OPERATION = "manual"
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
# A project's locks live under here (PROJECT_NAME in config/model.py: a path component).
PROJECTS_DIRECTORY = "projects"
_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# The scope of the old key, `locks/<environment>`: no project (see the module's docstring).
OLD_KEY_SCOPE = ""


class EnvironmentLocked(RepositoryLocked):
    """Someone else holds the environment's lock (exit code LOCKED)."""

    def __init__(self, message: str, hint: str | None = None, holder: LockHolder | None = None) -> None:
        super().__init__(message, hint)
        self.holder = holder


class EnvironmentLockLost(RepositoryLocked):
    """Our lock was taken away (forced or released by someone else) while we held it."""


def check_environment_name(environment: str) -> str:
    """The name unchanged if it is letters, digits, `-` and `_`; it becomes a path in the repository."""
    if not _ENVIRONMENT_NAME.fullmatch(environment):
        raise UsageError(
            f"not a valid environment name: {environment!r}",
            "use letters, digits, '-' and '_' only (at most 100 characters)",
        )
    return environment


def project_key(project: str) -> str:
    """The project's name as one path component of its lock's key. A name set in the config is
    letters, digits, '.', '_' and '-' and stays as it is; the default, the config directory's
    name, may be anything ("My App", "café"): what else it holds is percent-encoded (UTF-8), so
    every project gets a key of its own and none reaches outside `projects/`."""
    if _PROJECT_NAME.fullmatch(project) and project not in (".", ".."):
        return project
    if not project:
        raise UsageError("a project needs a name for its deploy lock", 'set project = "NAME" in lockstep.toml')
    return "".join(
        character if character.isascii() and (character.isalnum() or character in "_-") else _encoded(character)
        for character in project
    )


def _encoded(character: str) -> str:
    return "".join(f"%{byte:02X}" for byte in character.encode("utf-8", errors="surrogatepass"))


def lock_scope(project: str) -> str:
    """Where a project's lock documents live: the prefix of their paths in the repository."""
    return f"{PROJECTS_DIRECTORY}/{project_key(project)}/"


def now_utc() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name} is missing")
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _new_lock_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or wants) an environment's lock, and for what.

    `lock_id` is set by `EnvironmentLock.acquire`: it tells two holdings of the same deploy apart.
    `process_space` (boot ID and PID namespace, set by acquire for this process) says whose PIDs
    `pid` counts in: two containers may share a host name but not their processes.
    """

    deploy_id: str
    environment: str
    user: str
    host: str
    pid: int
    message: str | None
    acquired_at: datetime
    heartbeat_at: datetime
    operation: str
    lock_id: str = field(default="")
    process_space: str = field(default="")
    # The project whose lock this is, set by acquire; "" for a lock under the old key.
    project: str = field(default="")

    @classmethod
    def for_this_process(
        cls, deploy_id: str, environment: str, operation: str = "deploy", message: str | None = None
    ) -> LockHolder:
        """A holder for the running process: this user, host and PID, times set to now."""
        now = now_utc()
        return cls(
            deploy_id=deploy_id,
            environment=environment,
            user=current_user(),
            host=socket.gethostname(),
            pid=os.getpid(),
            message=message,
            acquired_at=now,
            heartbeat_at=now,
            operation=operation,
        )

    @classmethod
    def by_hand(cls, environment: str, message: str) -> LockHolder:
        """A holder for `lockstep lock acquire`: this user and host, no process (PID 0: the command
        ends, the lock stays), and an ID that says when it was taken."""
        now = now_utc()
        return cls(
            deploy_id=f"manual-{now.strftime('%Y%m%d_%H%M%S')}",
            environment=environment,
            user=current_user(),
            host=socket.gethostname(),
            pid=0,
            message=message,
            acquired_at=now,
            heartbeat_at=now,
            operation=MANUAL_OPERATION,
        )

    @property
    def by_hand_held(self) -> bool:
        """Whether it was taken by `lockstep lock acquire` (no process, never stale)."""
        return self.operation == MANUAL_OPERATION

    def to_document(self) -> dict[str, Any]:
        return {
            "deploy_id": self.deploy_id,
            "environment": self.environment,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "message": self.message,
            "acquired_at": self.acquired_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "operation": self.operation,
            "lock_id": self.lock_id,
            "process_space": self.process_space,
            "project": self.project,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LockHolder:
        """Raises ValueError when a field is missing or of the wrong type."""
        message = document.get("message")
        pid = document.get("pid")
        if not isinstance(pid, int):
            raise ValueError("pid is missing")
        return cls(
            deploy_id=str(document["deploy_id"]),
            environment=str(document["environment"]),
            user=str(document.get("user") or ""),
            host=str(document.get("host") or ""),
            pid=pid,
            message=None if message is None else str(message),
            acquired_at=_parse_time(document.get("acquired_at"), "acquired_at"),
            heartbeat_at=_parse_time(document.get("heartbeat_at"), "heartbeat_at"),
            operation=str(document.get("operation") or "deploy"),
            lock_id=str(document.get("lock_id") or ""),
            process_space=str(document.get("process_space") or ""),
            project=str(document.get("project") or ""),
        )


def human_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def describe_holder(holder: LockHolder, now: datetime | None = None) -> str:
    """One line: which deploy, who and where, since when, last heartbeat, message."""
    now = now or now_utc()
    since = holder.acquired_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    held_for = human_duration((now - holder.acquired_at).total_seconds())
    # A lock under the old key is every project's (pipeline docstring): say so, whoever took it.
    old_key = "" if holder.project else " (a lock of an older lockstep, under the key every project shared)"
    if holder.by_hand_held:
        text = f"a lock taken by hand by {holder.user or '?'}@{holder.host or '?'}, since {since} ({held_for} ago)"
        return text + (f", message: {holder.message!r}" if holder.message else "") + old_key
    silent_for = human_duration((now - holder.heartbeat_at).total_seconds())
    text = (
        f"{holder.operation} {holder.deploy_id} by {holder.user or '?'}@{holder.host or '?'} PID {holder.pid}, "
        f"since {since} ({held_for} ago), last heartbeat {silent_for} ago"
    )
    if holder.message:
        text += f", message: {holder.message!r}"
    return text + old_key


def current_process_space() -> str:
    """This kernel boot and PID namespace ("" where /proc cannot tell): where our PIDs mean something."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot_id}/{namespace}"


def _shares_our_processes(holder: LockHolder) -> bool:
    """Whether the holder's PID can be checked here: same host name and, when known, same PID space."""
    if holder.host != socket.gethostname() or holder.pid <= 0:
        return False
    ours = current_process_space()
    return not (holder.process_space and ours and holder.process_space != ours)


def judge_staleness(holder: LockHolder, stale_after: float, now: datetime | None = None) -> tuple[bool, str]:
    """Whether the holder is gone, and why (or why it counts as alive)."""
    now = now or now_utc()
    if holder.by_hand_held:
        return False, "taken by hand: held until `lockstep lock release`"
    if _shares_our_processes(holder) and not process_alive(holder.pid):
        return True, f"process {holder.pid} no longer runs on {holder.host}"
    silence = (now - holder.heartbeat_at).total_seconds()
    if silence > stale_after:
        return True, f"no heartbeat for {human_duration(silence)} (stale after {stale_after:g} s)"
    return False, f"heartbeat {human_duration(silence)} ago"


def _lock_path(scope: str, environment: str) -> str:
    return f"{scope}{LOCKS_DIRECTORY}/{environment}"


def _heartbeat_directory(scope: str, environment: str) -> str:
    return f"{scope}{HEARTBEATS_DIRECTORY}/{environment}"


def _heartbeat_path(scope: str, environment: str, lock_id: str) -> str:
    return f"{_heartbeat_directory(scope, environment)}/{lock_id}"


def _takeover_directory(scope: str, environment: str) -> str:
    return f"{scope}{TAKEOVERS_DIRECTORY}/{environment}"


def read_holder(store: DocumentStore, project: str, environment: str) -> LockHolder | None:
    """The project's environment's lock holder with its latest heartbeat, or None when unlocked.

    Raises IntegrityError when the lock document cannot be read (`lockstep lock release` removes it).
    """
    check_environment_name(environment)
    return _read_holder(store, lock_scope(project), environment)


def read_old_key_holder(store: DocumentStore, environment: str) -> LockHolder | None:
    """The holder of the environment's lock under the old key (an older lockstep's), or None."""
    check_environment_name(environment)
    return _read_holder(store, OLD_KEY_SCOPE, environment)


def read_blocking_holder(store: DocumentStore, project: str, environment: str) -> LockHolder | None:
    """Who keeps a deploy of the project's environment waiting: its own lock's holder, else the
    holder of a lock under the old key (what `lockstep status` shows)."""
    return read_holder(store, project, environment) or read_old_key_holder(store, environment)


def _read_holder(store: DocumentStore, scope: str, environment: str) -> LockHolder | None:
    path = _lock_path(scope, environment)
    document = store.load(path)
    if document is None:
        return None
    try:
        holder = LockHolder.from_document(document)
    except (KeyError, ValueError, TypeError) as error:
        raise IntegrityError(
            f"the lock of environment {environment} (lockstep/{path}) is damaged ({error})",
            f"remove it with `lockstep lock release --env {environment}`",
        ) from error
    if scope == OLD_KEY_SCOPE:
        holder = replace(holder, project="")  # whatever it says, the old key is every project's
    if holder.lock_id:
        with suppress(IntegrityError):
            heartbeat = store.load(_heartbeat_path(scope, environment, holder.lock_id))
            if heartbeat is not None and heartbeat.get("lock_id") == holder.lock_id:
                with suppress(ValueError):
                    beat = _parse_time(heartbeat.get("heartbeat_at"), "heartbeat_at")
                    if beat > holder.heartbeat_at:
                        holder = replace(holder, heartbeat_at=beat)
    return holder


def list_locked_environments(store: DocumentStore, project: str) -> list[str]:
    """Names of the project's environments that have a lock document, under its key or the old
    one, sorted."""
    directories = (f"{lock_scope(project)}{LOCKS_DIRECTORY}", f"{OLD_KEY_SCOPE}{LOCKS_DIRECTORY}")
    names = {path.rsplit("/", 1)[-1] for directory in directories for path in store.list(directory)}
    return sorted(name for name in names if _ENVIRONMENT_NAME.fullmatch(name))


def _remove_directory(store: DocumentStore, directory: str, keep: str | None = None) -> None:
    for path in list(store.list(directory)):
        if path != keep:
            store.remove(path)


def break_lock(
    store: DocumentStore, project: str | None, environment: str, *, expected_lock_id: str | None = None
) -> LockHolder | None:
    """Remove the project's environment's lock whoever holds it (`project` None: the lock under
    the old key); returns the holder removed (None if unlocked).

    With `expected_lock_id`, remove it only if it is still that lock (what the user confirmed);
    otherwise raise EnvironmentLocked describing the new holder. A damaged lock is removed too.
    """
    check_environment_name(environment)
    scope = OLD_KEY_SCOPE if project is None else lock_scope(project)
    try:
        holder = _read_holder(store, scope, environment)
    except IntegrityError:
        holder = None
        if expected_lock_id is not None:
            raise
    if expected_lock_id is not None and (holder is None or holder.lock_id != expected_lock_id):
        if holder is None:
            return None
        raise EnvironmentLocked(
            f"the lock of environment {environment} changed meanwhile: now {describe_holder(holder)}",
            "look again with `lockstep lock status` and run the release again if you still want to",
            holder,
        )
    store.remove(_lock_path(scope, environment))
    _remove_directory(store, _heartbeat_directory(scope, environment))
    _remove_directory(store, _takeover_directory(scope, environment))
    return holder


class EnvironmentLock:
    """Take, keep alive and give back one project's environment's lock.

    lock = EnvironmentLock(store, "shop", "production")
    with lock.acquire(holder, wait=60, on_stale=warn):
        ...  # check lock.lost (or call lock.ensure_held()) between steps
    """

    def __init__(
        self,
        store: DocumentStore,
        project: str,
        environment: str,
        *,
        stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
    ) -> None:
        self.store = store
        self.project = project
        self.environment = check_environment_name(environment)
        self._scope = lock_scope(project)
        self.stale_after = stale_after
        self.heartbeat_interval = heartbeat_interval
        self.holder: LockHolder | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    @property
    def path(self) -> str:
        return _lock_path(self._scope, self.environment)

    @property
    def lost(self) -> bool:
        """True once the heartbeat found the lock gone or held by someone else: abort the deploy."""
        return self._lost.is_set()

    def current(self) -> LockHolder | None:
        """Who holds the lock now (with the latest heartbeat), or None."""
        return _read_holder(self.store, self._scope, self.environment)

    def is_stale(self, holder: LockHolder, now: datetime | None = None) -> tuple[bool, str]:
        """Whether `holder` is gone (dead PID on this host, or silent for stale_after), and why."""
        return judge_staleness(holder, self.stale_after, now)

    def acquire(
        self,
        holder: LockHolder,
        *,
        wait: float = 0.0,
        force: bool = False,
        on_stale: Callable[[LockHolder], None] | None = None,
    ) -> EnvironmentLock:
        """Take the lock for `holder`, waiting up to `wait` seconds for the current holder.

        A stale lock is taken over (then `on_stale(previous holder)` is called); with `force`, the
        live lock found at the first look is taken over too. Raises EnvironmentLocked naming the
        holder when the wait runs out. Starts the heartbeat (none for a lock taken by hand, which
        outlives its process); returns self for `with`.
        """
        if self.holder is not None:
            raise LockstepError(f"this process already holds the lock of environment {self.environment}")
        if holder.environment != self.environment:
            raise ValueError(f"holder is for environment {holder.environment}, lock for {self.environment}")
        wanted = replace(holder, lock_id=_new_lock_id(), project=self.project)
        if holder.pid == os.getpid() and holder.host == socket.gethostname():
            wanted = replace(wanted, process_space=current_process_space())
        deadline = time.monotonic() + wait
        delay = _FIRST_POLL_DELAY_SECONDS
        forced_lock_id: str | None = None
        recovered: LockHolder | None = None
        while True:
            won = self._create(wanted)
            current: LockHolder | None = None
            if not won:
                current = self.current()
                if current is None:
                    continue  # released between our create and our look: try again at once
                stale, _reason = self.is_stale(current)
                # Force takes the lock seen now, not later ones; never one taken by hand (`lock release` does).
                if force and forced_lock_id is None and not stale and not current.by_hand_held:
                    forced_lock_id = current.lock_id
                if stale or current.lock_id == forced_lock_id:
                    if self._take_over(current, wanted, forced=not stale):
                        won = True
                        recovered = current if stale else recovered
                    else:
                        current = self.current()
                        if current is None:
                            continue
            if won:
                current = self._live_old_key_holder()
                if current is None:
                    break
                self.release()  # an older lockstep's deploy of this environment name runs: wait for it
                wanted = replace(wanted, lock_id=_new_lock_id())  # a forcer may have judged the one given back
            assert current is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._locked_error(current, wait)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _LONGEST_POLL_DELAY_SECONDS)
        if recovered is not None and on_stale is not None:
            on_stale(recovered)
        if not holder.by_hand_held:
            self._start_heartbeat()
        return self

    def _live_old_key_holder(self) -> LockHolder | None:
        """The live holder of a lock under the old key (module docstring), or None: a stale or
        damaged one is passed over, never removed (an older lockstep may be taking it over)."""
        try:
            holder = read_old_key_holder(self.store, self.environment)
        except IntegrityError:
            return None
        if holder is None or self.is_stale(holder)[0]:
            return None
        return holder

    def _locked_error(self, holder: LockHolder, wait: float) -> EnvironmentLocked:
        waited = f" (waited {wait:g} s)" if wait > 0 else ""
        if not holder.project:  # an older lockstep's, whatever it was for
            return EnvironmentLocked(
                f"environment {self.environment} is locked{waited} by an older lockstep: {describe_holder(holder)}",
                "it may be another project's deploy of an environment of this name (that lockstep did not tell "
                "projects apart), so --force does not take it: wait for it (--lock-wait DURATION), or if that "
                f"process is gone remove it with `lockstep lock release --env {self.environment}`; then upgrade "
                "lockstep on every machine deploying from this repository",
                holder,
            )
        if holder.by_hand_held:
            return EnvironmentLocked(
                f"environment {self.environment} is locked{waited}: {describe_holder(holder)}",
                "it stays locked until whoever took it runs `lockstep lock release "
                f"--env {self.environment}` (see `lockstep lock status`); --force does not take it",
                holder,
            )
        return EnvironmentLocked(
            f"environment {self.environment} is locked{waited}: {describe_holder(holder)}",
            "wait for it to finish, or wait for it with --lock-wait DURATION; if that process is gone, "
            f"remove the lock with `lockstep lock release --env {self.environment}`, or take it with --force",
            holder,
        )

    def _create(self, wanted: LockHolder) -> bool:
        now = now_utc()
        stamped = replace(wanted, acquired_at=now, heartbeat_at=now)
        if not self.store.create(self.path, stamped.to_document()):
            return False
        self.holder = stamped
        self._lost.clear()
        # Heartbeats of earlier holders are garbage now (ours does not exist yet).
        with suppress(LockstepError, OSError):
            _remove_directory(self.store, _heartbeat_directory(self._scope, self.environment))
        return True

    def _claim(self, lock_id: str) -> str | None:
        """Create the takeover claim for `lock_id`; None when a live claim of someone else exists."""
        directory = _takeover_directory(self._scope, self.environment)
        generation = 0
        while True:
            path = f"{directory}/{lock_id}-{generation}"
            claim = {"host": socket.gethostname(), "pid": os.getpid(), "claimed_at": now_utc().isoformat()}
            if self.store.create(path, claim):
                return path
            try:
                existing = self.store.load(path)
            except IntegrityError:
                existing = {}
            if existing is None:
                continue  # removed just now: try the same generation again
            try:
                claimed_at = _parse_time(existing.get("claimed_at"), "claimed_at")
            except ValueError:
                claimed_at = datetime.fromtimestamp(0, UTC)
            if (now_utc() - claimed_at).total_seconds() < max(self.stale_after, CLAIM_EXPIRES_AFTER_SECONDS):
                return None
            generation += 1  # its claimant died mid-takeover: the next generation decides anew

    def _take_over(self, judged: LockHolder, wanted: LockHolder, forced: bool) -> bool:
        """Replace the lock `judged` (stale, or forced) by ours; False when someone else got there first."""
        claim = self._claim(judged.lock_id)
        if claim is None:
            return False
        try:
            latest = self.current()
            if latest is None or latest.lock_id != judged.lock_id:
                return False
            if not forced and not self.is_stale(latest)[0]:
                return False  # it sent a heartbeat since we looked: alive after all
            self.store.remove(self.path)
            self.store.remove(_heartbeat_path(self._scope, self.environment, judged.lock_id))
            return self._create(wanted)
        finally:
            prefix = f"{_takeover_directory(self._scope, self.environment)}/{judged.lock_id}-"
            with suppress(LockstepError, OSError):
                for path in list(self.store.list(_takeover_directory(self._scope, self.environment))):
                    if path.startswith(prefix):
                        self.store.remove(path)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"lockstep-lock-heartbeat-{self.environment}", daemon=True
        )
        self._thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            # A failed write is tried again next beat: the lock only goes stale after stale_after.
            with suppress(LockstepError, OSError):
                if not self.heartbeat():
                    return

    def heartbeat(self) -> bool:
        """Record that we are alive, if we still hold the lock; False (and `lost`) when we do not."""
        with self._mutex:
            holder = self.holder
            if holder is None or self._lost.is_set():
                return False
            try:
                current = self.store.load(self.path)
            except IntegrityError:
                current = None
            if current is None or current.get("lock_id") != holder.lock_id:
                self._lost.set()
                return False
            now = now_utc()
            self.store.save(
                _heartbeat_path(self._scope, self.environment, holder.lock_id),
                {"lock_id": holder.lock_id, "heartbeat_at": now.isoformat()},
            )
            self.holder = replace(holder, heartbeat_at=now)
            return True

    def ensure_held(self) -> None:
        """Send a heartbeat now; raise EnvironmentLockLost when the lock is no longer ours."""
        if self.heartbeat():
            return
        current = None
        with suppress(LockstepError):
            current = self.current()
        now_held = f": now {describe_holder(current)}" if current is not None else ""
        raise EnvironmentLockLost(
            f"this process lost the lock of environment {self.environment}{now_held}",
            "someone released or forced the lock; check `lockstep lock status` before deploying again",
        )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours; safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.heartbeat_interval))
        with self._mutex:
            holder, self.holder = self.holder, None
            if holder is None:
                return
            try:
                current = self.store.load(self.path)
            except IntegrityError:
                current = None
            if current is not None and current.get("lock_id") == holder.lock_id:
                self.store.remove(self.path)
            else:
                self._lost.set()
            self.store.remove(_heartbeat_path(self._scope, self.environment, holder.lock_id))

    def __enter__(self) -> EnvironmentLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
