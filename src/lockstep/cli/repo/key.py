"""`repo key list|add|remove|passwd`: manage the passwords (key files) of a repository."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from lockstep.actions.repo.keys import KeyEntry, add_key, change_password, list_keys, read_new_password, remove_key
from lockstep.cli.output import console, print_json
from lockstep.cli.repo.options import access_from, repository_options, wants_json
from lockstep.errors import UsageError

NEW_PASSWORD_FILE_HELP = "Read the new password from FILE. Without it, prompt twice (a terminal is required)."


def _new_password(new_password_file: Path | None) -> str:
    """From --new-password-file, or typed twice at a terminal; never from the command line."""
    if new_password_file is not None:
        return read_new_password(new_password_file)
    if not sys.stdin.isatty():
        raise UsageError(
            "no new password given and standard input is not a terminal",
            "pass --new-password-file FILE",
        )
    password: str = click.prompt(
        "new password",
        hide_input=True,
        confirmation_prompt="enter the new password again",
        err=True,
    )
    if not password:
        raise UsageError("an empty password is not allowed")
    return password


def _created_text(entry: KeyEntry) -> str:
    if entry.created_ns is None:
        return entry.created or "?"
    return datetime.fromtimestamp(entry.created_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _entry_document(entry: KeyEntry) -> dict[str, Any]:
    """restic's `key list --json` fields, with the full ID plus short_id as snapshots have."""
    return {
        "current": entry.current,
        "id": entry.id,
        "short_id": entry.short_id,
        "userName": entry.username,
        "hostName": entry.hostname,
        "created": entry.created,
        "damaged": entry.damaged,
    }


@click.group("key")
def key_group() -> None:
    """List, add and remove the passwords (keys) that open the repository."""


@key_group.command("list")
@repository_options
def list_command(**options: Any) -> None:
    """List the keys; `*` marks the one your password opened."""
    json_output = wants_json(options)
    entries = list_keys(access_from(options))
    if json_output:
        print_json([_entry_document(entry) for entry in entries])
        return
    table = Table(box=None, header_style="bold")
    for column in (" ID", "User", "Host", "Created"):
        table.add_column(column)
    for entry in entries:
        marker = "*" if entry.current else " "
        if entry.damaged:
            table.add_row(f"{marker}{entry.short_id}", "(damaged key file)", "", "")
            continue
        table.add_row(f"{marker}{entry.short_id}", entry.username, entry.hostname, _created_text(entry))
    console.print(table)


@key_group.command("add")
@click.option("--new-password-file", type=click.Path(path_type=Path, dir_okay=False), help=NEW_PASSWORD_FILE_HELP)
@click.option("--user", "username", help="User name to record in the new key (default: yours).")
@click.option("--host", "hostname", help="Host name to record in the new key (default: this machine's).")
@repository_options
def add_command(new_password_file: Path | None, username: str | None, hostname: str | None, **options: Any) -> None:
    """Add a key for a new password; the current password keeps working."""
    json_output = wants_json(options)
    key_id = add_key(
        access_from(options), lambda: _new_password(new_password_file), username=username, hostname=hostname
    )
    if json_output:
        print_json({"message_type": "key_added", "id": key_id})
    else:
        console.print(f"saved new key as {key_id[:8]}")


@key_group.command("remove")
@click.argument("key_id", metavar="ID")
@repository_options
def remove_command(key_id: str, **options: Any) -> None:
    """Remove the key whose ID starts with ID (not the one in use)."""
    json_output = wants_json(options)
    removed = remove_key(access_from(options), key_id)
    if json_output:
        print_json({"message_type": "key_removed", "id": removed})
    else:
        console.print(f"removed key {removed[:8]}")


@key_group.command("passwd")
@click.option("--new-password-file", type=click.Path(path_type=Path, dir_okay=False), help=NEW_PASSWORD_FILE_HELP)
@repository_options
def passwd_command(new_password_file: Path | None, **options: Any) -> None:
    """Change the password: add a key for the new one, then remove the key in use."""
    json_output = wants_json(options)
    change = change_password(access_from(options), lambda: _new_password(new_password_file))
    if json_output:
        print_json({"message_type": "password_changed", "id": change.new_key_id, "removed": change.removed_key_id})
    else:
        console.print(f"saved new key as {change.new_key_id[:8]}, removed key {change.removed_key_id[:8]}")


COMMANDS = [key_group]
