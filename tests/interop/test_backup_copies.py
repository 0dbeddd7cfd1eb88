"""[repository.copies]: `lockstep backup` copies its snapshots on to other repositories (3-2-1).

Real things only: the real CLI, a SQLite database, local repositories and one on the loopback S3
server (moto), each with its own password, checked afterwards by the real restic binary."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from lockstep.exit_codes import ExitCode
from tests.cli.test_backup_cli import CHECK_UUID, Pings, pings  # noqa: F401 (the fixture)
from tests.conftest import Completed, run_lockstep, run_restic

pytestmark = pytest.mark.usefixtures("restic_binary")

MAIN_PASSWORD = "main-password-of-the-primary-7f2a"
USB_PASSWORD = "usb-copy-password-91c4e"
OFFSITE_PASSWORD = "offsite-copy-password-55d0b"
WRONG_PASSWORD = "not-the-usb-password-3b8e"


class Project:
    """lockstep.toml with a SQLite database, the primary repository and copies in tmp_path."""

    def __init__(self, root: Path, s3_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.repository = root / "repository"
        self.usb = root / "usb-repository"
        self.usb_password = root / "usb-password"
        self.usb_password.write_text(USB_PASSWORD + "\n")
        self.usb_password.chmod(0o600)
        self.s3_env = s3_env or {}
        self.env = {
            "LOCKSTEP_PASSWORD": MAIN_PASSWORD,
            "OFFSITE_REPOSITORY_PASSWORD": OFFSITE_PASSWORD,
            "COLUMNS": "200",
            **{key: value for key, value in self.s3_env.items() if key.startswith("AWS_")},
        }
        database = sqlite3.connect(root / "shop.db")
        database.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
        database.commit()
        database.close()
        assert self.init(str(self.repository), MAIN_PASSWORD).returncode == 0

    def write_config(self, copies: str, extra: str = "") -> None:
        (self.root / "lockstep.toml").write_text(
            f'[repository]\nurl = "{self.repository}"\n\n{copies}\n'
            f'[databases.shop]\nurl = "sqlite:///{self.root / "shop.db"}"\n{extra}'
        )

    def usb_copy(self) -> str:
        return f'[repository.copies.usb]\nurl = "{self.usb}"\npassword_file = "{self.usb_password}"\n'

    def offsite_url(self) -> str:
        return self.s3_env["LOCKSTEP_REPOSITORY"]

    def offsite_copy(self, url: str | None = None) -> str:
        return (
            f'[repository.copies.offsite]\nurl = "{url or self.offsite_url()}"\n'
            'password_env = "OFFSITE_REPOSITORY_PASSWORD"\n'
        )

    def init(self, location: str, password: str) -> Completed:
        return run_lockstep(["repo", "init", "-r", location], env={**self.env, "LOCKSTEP_PASSWORD": password})

    def add_order(self, note: str) -> None:
        database = sqlite3.connect(self.root / "shop.db")
        database.execute("INSERT INTO orders (note) VALUES (?)", (note,))
        database.commit()
        database.close()

    def lockstep(self, *arguments: str) -> Completed:
        return run_lockstep(list(arguments), cwd=self.root, env=self.env)

    def backup(self) -> dict[str, Any]:
        result = self.lockstep("backup", "--json")
        assert result.returncode == 0, result.err
        document: dict[str, Any] = json.loads(result.out)
        return document

    def restic(self, location: str, password: str, arguments: list[str]) -> Completed:
        extra = {key: value for key, value in self.s3_env.items() if key.startswith("AWS_")}
        completed = run_restic(location, arguments, password=password, env=extra)
        assert completed.returncode == 0, f"restic {' '.join(arguments)} failed:\n{completed.err}"
        return completed

    def restic_snapshots(self, location: str, password: str) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(self.restic(location, password, ["snapshots", "--json"]).out)
        return listed


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_every_backup_goes_to_a_local_and_an_s3_copy(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """Both copies hold the new snapshot (restic sees it, `original` names the primary's), restic's
    check reads every byte of each, and the next backup sends only its own snapshot."""
    project = Project(tmp_path, s3_env)
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    assert project.init(project.offsite_url(), OFFSITE_PASSWORD).returncode == 0
    # Every snapshot kept (the default retention keeps one a day), to count them.
    events = '\n[[notifications.channels]]\nkind = "event-log"\npath = "events.jsonl"\n'
    project.write_config(project.usb_copy() + project.offsite_copy(), extra="\n[backup]\nforget = false\n" + events)

    first = project.backup()
    assert [copy["name"] for copy in first["copies"]] == ["usb", "offsite"]
    copies = {"usb": (str(project.usb), USB_PASSWORD), "offsite": (project.offsite_url(), OFFSITE_PASSWORD)}
    for name, (location, password) in copies.items():
        (listed,) = project.restic_snapshots(location, password)
        assert listed["original"] == first["snapshot_id"], name
        assert "no errors were found" in project.restic(location, password, ["check", "--read-data"]).out

    project.add_order("second")
    text = project.lockstep("backup")
    assert text.returncode == 0, text.err
    assert ", copied to usb, offsite, " in text.out
    primary_ids = [item["id"] for item in project.restic_snapshots(str(project.repository), MAIN_PASSWORD)]
    assert len(primary_ids) == 2
    for name, (location, password) in copies.items():
        listed = project.restic_snapshots(location, password)
        assert sorted(item["original"] for item in listed) == sorted(primary_ids), name
        assert "no errors were found" in project.restic(location, password, ["check", "--read-data"]).out

    third = project.backup()
    for copy in third["copies"]:
        assert len(copy["copied"]) == 1 and copy["already_there"] == 2, copy
    last_event = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert last_event["kind"] == "snapshot.created" and last_event["details"]["copied_to"] == ["usb", "offsite"]


def test_a_failed_copy_is_caught_up_and_retention_applies_to_the_copy(tmp_path: Path) -> None:
    """A copy that was not there at one backup gets what it missed at the next; [retention]
    forgets on the copy what it forgets on the repository, as borgmatic prunes each one."""
    project = Project(tmp_path)
    project.write_config(project.usb_copy(), extra="\n[backup]\nforget = false\n")
    missing = project.lockstep("backup")
    assert missing.returncode == ExitCode.NO_REPOSITORY, missing.err
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    project.add_order("two")
    caught_up = project.backup()
    assert len(caught_up["copies"][0]["copied"]) == 2
    assert len(project.restic_snapshots(str(project.usb), USB_PASSWORD)) == 2

    project.write_config(project.usb_copy())  # the default retention: it forgets some of the day's
    project.add_order("three")
    last = project.backup()
    assert last["forgotten"]
    primary = project.restic_snapshots(str(project.repository), MAIN_PASSWORD)
    copied = project.restic_snapshots(str(project.usb), USB_PASSWORD)
    assert len(primary) == 3 - len(last["forgotten"])
    assert sorted(item["original"] for item in copied) == sorted(item["id"] for item in primary)


def test_a_copy_that_does_not_exist_says_to_init_it(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.write_config(project.usb_copy())
    result = project.lockstep("backup")
    assert result.returncode == ExitCode.NO_REPOSITORY, result.err
    assert "copy usb: there is no repository at" in result.err
    assert f"lockstep repo init -r local:{project.usb}" in result.err
    assert not project.usb.exists(), "a copy is never initialised behind the user's back"
    assert len(project.restic_snapshots(str(project.repository), MAIN_PASSWORD)) == 1


def test_a_wrong_copy_password_fails_the_backup_but_keeps_the_snapshot(tmp_path: Path, pings: Pings) -> None:  # noqa: F811
    """Exit code 11 (wrong password), one line that names the copy and not a password, /fail
    pinged with it; the primary repository holds the new snapshot all the same."""
    project = Project(tmp_path)
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    project.usb_password.write_text(WRONG_PASSWORD + "\n")
    project.write_config(project.usb_copy(), extra=f'\n[backup]\nhealthchecks_url = "{pings.url}"\n')
    result = project.lockstep("backup")
    assert result.returncode == ExitCode.WRONG_PASSWORD, result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith("lockstep: error: copy usb: its password does not open the repository at"), line
    for password in (MAIN_PASSWORD, USB_PASSWORD, WRONG_PASSWORD):
        assert password not in result.err and password not in result.out
    assert pings.paths() == ["/start", "/fail"]
    assert "copy usb" in pings.received[-1][1] and WRONG_PASSWORD not in pings.received[-1][1]
    assert len(project.restic_snapshots(str(project.repository), MAIN_PASSWORD)) == 1
    assert project.restic_snapshots(str(project.usb), USB_PASSWORD) == []


def test_doctor_checks_each_copy(tmp_path: Path) -> None:
    """A copy that opens passes; one on an S3 endpoint nobody listens on fails, named."""
    project = Project(tmp_path)
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    unreachable = f"s3:http://127.0.0.1:{closed_port()}/{CHECK_UUID.split('-')[0]}/repo"
    project.env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-value"})
    project.write_config(project.usb_copy() + project.offsite_copy(unreachable))
    result = project.lockstep("doctor")
    assert result.returncode != 0
    lines = result.out.splitlines()
    assert any(line.startswith("PASS  repository copy usb: ") for line in lines), result.out
    (offsite,) = [line for line in lines if line.startswith("FAIL  repository copy offsite: ")]
    assert unreachable in offsite
    assert OFFSITE_PASSWORD not in result.out and USB_PASSWORD not in result.out


def test_a_copy_locked_by_another_process_is_put_off_to_the_next_backup(tmp_path: Path, pings: Pings) -> None:  # noqa: F811
    """An exclusive lock on the copy (a prune there) does not fail the backup: a warning names the
    copy and the lock, the success ping goes out, and the next backup sends what it missed."""
    from lockstep.repository.locks import locked
    from lockstep.repository.repository import Repository
    from lockstep.storage.local import LocalBackend

    project = Project(tmp_path)
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    project.write_config(project.usb_copy(), extra=f'\n[backup]\nhealthchecks_url = "{pings.url}"\n')
    copy = Repository.open(LocalBackend(project.usb), USB_PASSWORD)
    try:
        with locked(copy, exclusive=True):
            held = project.lockstep("backup", "--json")
    finally:
        copy.close()
    assert held.returncode == 0, held.err
    document = json.loads(held.out)
    assert document["copies"] == []
    (warning,) = [line for line in document["warnings"] if line.startswith("copy usb skipped")]
    assert "the next backup catches it up" in warning and "exclusive lock" in warning, warning
    assert "copy usb skipped" in held.err
    assert pings.paths() == ["/start", "/"]
    assert "copied to" not in pings.received[-1][1]
    assert project.restic_snapshots(str(project.usb), USB_PASSWORD) == []

    project.add_order("two")
    caught_up = project.backup()
    assert len(caught_up["copies"][0]["copied"]) == 2 and not caught_up["warnings"]
    assert len(project.restic_snapshots(str(project.usb), USB_PASSWORD)) == 2


def test_a_primary_that_fails_during_the_copy_step_is_named_not_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_to reworded every error as the copy's: the primary locked exclusively (a prune there
    between the snapshot and the copy) read `copy usb (USB): the repository at PRIMARY is locked`,
    and a primary gone read `copy usb: there is no repository at USB`, with a hint to init the copy."""
    from lockstep.actions.repository_copies import copy_access, copy_to
    from lockstep.actions.snapshot_create import load_project
    from lockstep.errors import RepositoryLocked, RepositoryNotFound
    from lockstep.repository.locks import locked
    from lockstep.repository.repository import Repository
    from lockstep.storage.local import LocalBackend

    project = Project(tmp_path)
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    project.write_config(project.usb_copy())
    monkeypatch.setenv("LOCKSTEP_PASSWORD", MAIN_PASSWORD)
    context = load_project(tmp_path, None, None)
    usb = copy_access("usb", context.config.repository.copies["usb"], tmp_path)

    primary = Repository.open(LocalBackend(project.repository), MAIN_PASSWORD)
    try:
        with locked(primary, exclusive=True), pytest.raises(RepositoryLocked) as held:
            copy_to("usb", usb, context.access, context.name)
    finally:
        primary.close()
    assert held.value.message.startswith("copy usb: could not open the primary repository, its source: "), held.value
    assert f"{project.repository} is locked: exclusive lock" in held.value.message, held.value
    assert str(project.usb) not in held.value.message, held.value

    gone = tmp_path / "gone"
    project.repository.rename(gone)
    with pytest.raises(RepositoryNotFound) as missing:
        copy_to("usb", usb, context.access, context.name)
    assert missing.value.message.startswith(
        "copy usb: could not open the primary repository, its source: there is no repository at "
    ), missing.value
    assert missing.value.message.endswith(str(project.repository)), missing.value
    assert "repo init -r" not in (missing.value.hint or ""), missing.value


def test_a_damaged_primary_pack_is_named_as_the_primary_not_the_copy(tmp_path: Path) -> None:
    """A data pack of the primary missing, then damaged, when the backup copies the snapshot that
    needs it: exit 12 (damaged data), and the error says the primary repository (the copy's
    source), which pack and snapshot, and to check the primary. It once read `copy usb (USB):
    pack … is missing: run lockstep repo check`, as if the copy were damaged."""
    from lockstep.repository.blobs import BlobType
    from lockstep.repository.repository import Repository
    from lockstep.storage.local import LocalBackend

    project = Project(tmp_path)
    project.write_config("", extra="\n[backup]\nforget = false\n")
    first = project.backup()
    primary = Repository.open(LocalBackend(project.repository), MAIN_PASSWORD)
    try:
        primary.load_index()
        (pack_id,) = {location.pack_id.hex() for _, location in primary.index.blobs(BlobType.DATA)}
    finally:
        primary.close()
    pack = project.repository / "data" / pack_id[:2] / pack_id
    intact = pack.read_bytes()
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    project.write_config(project.usb_copy(), extra="\n[backup]\nforget = false\n")

    pack.unlink()
    project.add_order("two")
    missing = project.lockstep("backup")
    damaged_bytes = bytearray(intact)
    damaged_bytes[len(intact) // 2] ^= 0xFF
    pack.write_bytes(bytes(damaged_bytes))
    project.add_order("three")
    damaged = project.lockstep("backup")

    for result, what in ((missing, "is missing"), (damaged, "failed authentication")):
        assert result.returncode == ExitCode.INTEGRITY, result.err
        (line,) = result.err.strip().splitlines()
        assert line.startswith(
            "lockstep: error: copy usb: could not read the primary repository, its source, "
            f"at local:{project.repository} (while copying snapshot {first['snapshot_id'][:8]}): "
        ), line
        assert f"pack {pack_id[:8]}" in line and what in line, line
        assert "the primary repository is damaged, not the copy" in line and "lockstep repo check --read-data" in line
        assert str(project.usb) not in line, line
    assert len(project.restic_snapshots(str(project.repository), MAIN_PASSWORD)) == 3
    assert project.restic_snapshots(str(project.usb), USB_PASSWORD) == []
    assert "no errors were found" in project.restic(str(project.usb), USB_PASSWORD, ["check", "--read-data"]).out


def test_a_primary_locked_after_the_snapshot_puts_the_copies_off_to_the_next_backup(
    tmp_path: Path,
    pings: Pings,  # noqa: F811
) -> None:
    """A prune of the primary that takes its exclusive lock between the snapshot and the copies
    (the backup waits at its fault-injection point until the test holds that lock) does not fail
    the backup, whose snapshot is safe: each copy is put off with a warning that names the
    primary, as a busy copy is, the success ping goes out, and the next backup catches up. It
    failed the whole backup with exit 4."""
    from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE
    from lockstep.repository.locks import locked
    from lockstep.repository.repository import Repository
    from lockstep.storage.local import LocalBackend

    project = Project(tmp_path)
    offsite = tmp_path / "offsite-repository"
    assert project.init(str(project.usb), USB_PASSWORD).returncode == 0
    assert project.init(str(offsite), OFFSITE_PASSWORD).returncode == 0
    # No retention and no verification: nothing else locks the primary after the snapshot.
    project.write_config(
        project.usb_copy() + project.offsite_copy(str(offsite)),
        extra=f'\n[backup]\nforget = false\nverify_level = "none"\nhealthchecks_url = "{pings.url}"\n',
    )
    go = tmp_path / "go-ahead"
    environment = {**project.env, WAIT_AT_VARIABLE: "backup copies", WAIT_FOR_VARIABLE: str(go)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run_lockstep, ["backup", "--json"], env=environment, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            while not list((project.repository / "snapshots").iterdir()):
                assert not running.done(), running.result().err
                assert time.monotonic() < deadline, "no snapshot after 120 s"
                time.sleep(0.05)
            primary = Repository.open(LocalBackend(project.repository), MAIN_PASSWORD)
            try:
                # Waits for the backup's own shared lock to go; the backup then waits for `go`.
                with locked(primary, exclusive=True, wait_seconds=60):
                    go.touch()
                    held = running.result(timeout=300)
            finally:
                primary.close()
        finally:
            go.touch()  # the backup must not wait for a go-ahead that never comes

    assert held.returncode == 0, held.err
    document = json.loads(held.out)
    assert document["copies"] == []
    skipped = [line for line in document["warnings"] if "skipped, the next backup catches it up" in line]
    assert [line.split(" skipped")[0] for line in skipped] == ["copy usb", "copy offsite"], document["warnings"]
    for line in skipped:
        assert "the primary repository, its source, is busy" in line and "exclusive lock" in line, line
        assert str(project.repository) in line and str(project.usb) not in line, line
    assert pings.paths() == ["/start", "/"]
    assert len(project.restic_snapshots(str(project.repository), MAIN_PASSWORD)) == 1
    assert project.restic_snapshots(str(project.usb), USB_PASSWORD) == []

    project.add_order("two")
    caught_up = project.backup()
    assert [len(copy["copied"]) for copy in caught_up["copies"]] == [2, 2] and not caught_up["warnings"]
    assert len(project.restic_snapshots(str(offsite), OFFSITE_PASSWORD)) == 2


def test_a_copy_without_its_password_is_named_in_plain_words(tmp_path: Path) -> None:
    """The copy's password variable unset: the error read "no repository copy offsite password
    given"; it names the copy after the password now."""
    project = Project(tmp_path)
    del project.env["OFFSITE_REPOSITORY_PASSWORD"]
    project.write_config(project.offsite_copy(str(project.usb)))
    result = project.lockstep("backup")
    assert result.returncode == ExitCode.USAGE, result.err
    assert "no password given for the repository copy offsite" in result.err, result.err
    assert "OFFSITE_REPOSITORY_PASSWORD" in result.err and "copy offsite password" not in result.err
