#!/usr/bin/env python3
"""Write the command references from the click commands themselves, so they cannot drift.

docs/repository.md documents `lockstep repo …`; docs/commands.md every other command.

    python scripts/generate_cli_reference.py          # rewrite the files
    python scripts/generate_cli_reference.py --check  # exit 1 if one is out of date (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lockstep.cli.main import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"

REPOSITORY_INTRODUCTION = """# `lockstep repo`: command reference

Generated from the code by `python scripts/generate_cli_reference.py`; a test fails when this
file and the commands disagree. Every command takes the repository from `--repo` or
`LOCKSTEP_REPOSITORY` and the password from `--password-file`, `--password-command`,
`LOCKSTEP_PASSWORD` or `LOCKSTEP_PASSWORD_FILE`
(in restic's order: see the README's [password sources](../README.md#password-sources)).
Exit codes: [exit-codes.md](exit-codes.md).

## Keeping an off-site copy

A repository on the same machine (or in the same building) as what it backs up goes when that
machine goes. Keep a second copy elsewhere (3-2-1: three copies, two media, one off site) with
`lockstep repo copy`, restic's `copy`: the destination is the usual `-r/--repo` (with its
`--password-file`/`--password-command`/`LOCKSTEP_PASSWORD`), the source is `--from-repo` (with
`--from-password-file`, `--from-password-command` or `LOCKSTEP_FROM_PASSWORD`; restic's
`--from-*` names). The two repositories have their own passwords and keys: each blob the
destination lacks is read and verified from the source, encrypted again with the destination's
key, and only then is the snapshot saved there, recording the source snapshot's ID as
`original`. A snapshot copied before is skipped, so the copy can run after every backup:

```sh
# once: the off-site repository, with a password of its own
export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
lockstep repo init -r s3:s3.eu-central-1.amazonaws.com/shop-offsite --password-file /etc/lockstep/offsite.pw
```

```text
# crontab: the project's backup (into /var/backups/shop, its lockstep.toml's repository) at
# 03:15, then what is new goes off site
AWS_ACCESS_KEY_ID=...
AWS_SECRET_ACCESS_KEY=...
15 3 * * * cd /srv/shop && lockstep backup && lockstep repo copy -r s3:s3.eu-central-1.amazonaws.com/shop-offsite --password-file /etc/lockstep/offsite.pw --from-repo /var/backups/shop --from-password-file /etc/lockstep/local.pw
```

Or let every backup do it: list the copy in lockstep.toml, and `lockstep backup` (and the agent's
scheduled backups) copies there after the snapshot, its retention and verification, the way
borgmatic backs up to each repository it lists:

```toml
[repository.copies.offsite]
url = "s3:https://s3.eu-central-1.amazonaws.com/shop-offsite"
password_file = "/etc/lockstep/offsite.pw"   # or password_command, or password_env = "VARIABLE"
```

Each copy needs its own password source (the repository's password and `LOCKSTEP_PASSWORD*`
never apply to it) and must exist already: lockstep does not create a repository behind your
back, so a missing one fails the backup saying to run `lockstep repo init -r URL`. A backup
sends each copy every snapshot of the repository it lacks, not only the new one: restic's rule
for similar snapshots finds the ones already there from the snapshot lists alone, so this costs
little, and a copy that was unreachable at one backup catches up at the next. Then `[retention]`
is applied to the copy as to the repository (`forget`, for the backup's environment; prune each
repository as you prune the main one), as borgmatic prunes every repository: the copy keeps what
the repository keeps. A copy that is missing, does not open with its password or cannot be
reached fails the backup (exit code 10, 11 or 14, the one line naming the copy, never its
password; healthchecks get /fail) after the new snapshot is written and verified in the
repository, where it stays; copies listed after the failed one are tried at the next backup.
A copy locked by another process (a `repo prune` there) only puts that copy off: the backup
warns `copy offsite skipped, the next backup catches it up: ...` (in `--json`'s `warnings`),
exits 0 and pings success, as retention does on a locked repository. So does the repository
itself, the copies' source, when another process locked it exclusively after the snapshot: every
copy is put off (`... the primary repository, its source, is busy: ...`). A pack of the
repository missing or damaged while a copy reads it fails the backup with exit code 12, worded as
the repository's fault, not the copy's (`copy offsite: could not read the primary repository`).
The one-line report ends `copied to offsite`, `--json` lists each copy's new snapshots, and
`lockstep doctor` checks that each copy opens with its password.

`restic copy` and `restic -r s3:... snapshots` work on the same repositories. Interrupted (even
by `kill -9`), a copy leaves the destination consistent: snapshots are copied one at a time and
each is saved only after its data and index are stored; packs of an unfinished one are
removed by the next `repo prune` of the destination, as is the temporary file of a pack cut
off mid-write, once an hour old (restic leaves those). On S3 the like is an unfinished multipart
upload, billed until aborted: `repo prune` aborts those under the repository's prefix initiated
more than an hour ago and counts them in `--json`'s `temporary_files_removed` (a server without
the API, or a policy that denies listing them, leaves them to a lifecycle rule). Copies do not chunk files again, so data
backed up directly into the destination deduplicates with copied data only where both
repositories cut the same chunks, that is share the chunker polynomial: create the destination
with the source's (restic's `init --copy-chunker-params`, with the `--from-*` options of `repo copy`):

```sh
lockstep repo init -r /mnt/usb/shop --from-repo /var/backups/shop --from-password-file /etc/lockstep/local.pw --copy-chunker-params
```

A copy reads the source's blobs as restic's does, grouped by pack: neighbouring blobs of a pack
come in one ranged read, so on S3 one request per pack rather than one per blob.
"""  # noqa: E501 (a crontab line cannot be wrapped)

COMMANDS_INTRODUCTION = """# lockstep commands

Generated from the code by `python scripts/generate_cli_reference.py`; a test fails when this
file and the commands disagree. These commands read the project's `lockstep.toml`
([config.md](config.md)); the repository commands are in [repository.md](repository.md).
Exit codes: [exit-codes.md](exit-codes.md).

## Deploy locks

A deploy or rollback holds its environment's lock, kept in the repository so that deployers on
other machines see it, under the project's name and the environment's
(`lockstep/projects/PROJECT/locks/ENVIRONMENT`): projects sharing a repository (`project` in
[config.md](config.md#project)) each have their own `production`, and neither waits for the
other's deploy, nor does `--force` on one take the other's lock. `lockstep status`, `lockstep
lock status|acquire|release` and the hosts of a multi-host deploy ([hosts.md](hosts.md)) look at
the same lock.

lockstep before per-project locks kept one lock per environment name for every project
(`lockstep/locks/ENVIRONMENT`, the "old key"). Such a lock, left by an older lockstep still
deploying from the repository, may be any project's: while it is live, a deploy of every
project's environment of that name waits for it (exit 4 once `--lock-wait` runs out), and
`--force` does not take it. A stale one (its process gone, or no heartbeat for
`deploy.lock_stale_after`) is passed over. `lockstep lock status` lists it as `ENVIRONMENT (old
key)`, and `lockstep lock release --env ENVIRONMENT` removes it when the project's own lock is
free. An older lockstep does not see the new locks, so upgrade every machine that deploys from
the repository before two of them deploy at once.
"""


def _context(command: click.Command, path: list[str], parent: click.Context | None) -> click.Context:
    # With its parent, so inherited settings show as they do at a terminal (`-h, --help`).
    settings = {"terminal_width": 100, "max_content_width": 100, **command.context_settings}
    return click.Context(command, parent=parent, info_name=path[-1], **settings)


def _render(command: click.Command, path: list[str], parts: list[str], parent: click.Context) -> None:
    context = _context(command, path, parent)
    runs_itself = not isinstance(command, click.Group) or command.invoke_without_command
    if runs_itself:  # `lockstep agent` runs the agent: its own options are documented too
        parts.append(f"\n## `{' '.join(path)}`\n")
        parts.append("```text")
        parts.append(command.get_help(context))
        parts.append("```")
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                _render(sub, [*path, name], parts, context)


def render() -> dict[Path, str]:
    """Each reference file and the text it must have."""
    root = _context(cli, ["lockstep"], None)
    repository_parts = [REPOSITORY_INTRODUCTION]
    repo = cli.get_command(root, "repo")
    assert repo is not None
    _render(repo, ["lockstep", "repo"], repository_parts, root)
    # The options every command takes (--json, --debug) are lockstep's own, before the command.
    command_parts = [COMMANDS_INTRODUCTION, "\n## `lockstep`\n", "```text", cli.get_help(root), "```"]
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        if name != "repo" and command is not None:
            _render(command, ["lockstep", name], command_parts, root)
    return {
        DOCS / "repository.md": "\n".join(repository_parts) + "\n",
        DOCS / "commands.md": "\n".join(command_parts) + "\n",
    }


def main() -> int:
    stale = []
    for target, text in render().items():
        if "--check" in sys.argv:
            if not target.exists() or target.read_text() != text:
                stale.append(target)
        else:
            target.write_text(text)
    for target in stale:
        print(f"{target} is out of date: run python scripts/generate_cli_reference.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
