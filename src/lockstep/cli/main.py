"""Entry point: the `lockstep` command group and the single exit path for errors."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback

import click

from lockstep import __version__
from lockstep.errors import LockstepError
from lockstep.exit_codes import ExitCode
from lockstep.malloc_arenas import share_one_heap
from lockstep.redaction import process_redactor

# Each command's name and the modules that define it (each exports COMMANDS, a list of click
# commands or groups). A module that adds a verb to an existing group (`snapshot verify`) does so
# when imported. Modules load only when their command runs: `lockstep rollback` must not pay for
# importing every other command first.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "agent": ("lockstep.cli.agent",),
    "backup": ("lockstep.cli.backup",),
    "deploy": ("lockstep.cli.deploy",),
    "doctor": ("lockstep.cli.doctor",),
    "history": ("lockstep.cli.status",),
    "init": ("lockstep.cli.init",),
    "lock": ("lockstep.cli.lock",),
    "repo": ("lockstep.cli.repo",),
    "rollback": ("lockstep.cli.rollback",),
    "snapshot": ("lockstep.cli.snapshot",),  # its subcommands load lazily too (cli/snapshot.py)
    "status": ("lockstep.cli.status",),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        import importlib

        found: click.Command | None = None
        for module_name in COMMAND_MODULES.get(cmd_name, ()):
            module = importlib.import_module(module_name)
            for command in module.COMMANDS:
                if command.name == cmd_name:
                    found = command
        return found


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lockstep", message="%(prog)s %(version)s")
@click.option("--json", "json_output", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
@click.pass_context
def cli(context: click.Context, json_output: bool, debug: bool) -> None:
    """lockstep: deploys that are safe to undo.

    Snapshots of code, databases and config in a restic-compatible repository; blue-green deploys
    with health gates, automatic rollback and data rollback.
    """
    context.ensure_object(dict)
    context.obj["json"] = json_output
    context.obj["debug"] = debug


def _interrupt_on_sigterm() -> None:
    """Treat SIGTERM and SIGHUP like Ctrl-C: unwind, so a backup removes its unindexed packs and
    its lock (a killed process leaves a stale lock that blocks check and prune until `repo
    unlock`), and a deploy undoes its steps. SIGHUP is what an ssh session that drops sends: by
    default it ended a deploy on the spot, half-way through its migrations, with nothing undone."""

    def interrupt(signal_number: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup's choice stands
            signal.signal(signal.SIGHUP, interrupt)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure leaves through here with a documented exit code."""
    # cli.output (rich, about 25 ms) is imported only on the error paths below: `--version` and
    # `--help` never print through it, and each command's module imports it for itself.
    if argv is None:  # a real process (console script, python -m), not a call from a test
        _interrupt_on_sigterm()
        share_one_heap()  # before any thread starts (malloc_arenas.py)
    debug = "--debug" in (argv if argv is not None else sys.argv)
    json_output = "--json" in (argv if argv is not None else sys.argv)
    try:
        result = cli.main(args=argv, prog_name="lockstep", standalone_mode=False)
        if isinstance(result, int) and result:
            sys.exit(result)  # click hands back ctx.exit(code) as a return value in this mode
    except click.exceptions.Exit as exit_request:
        sys.exit(exit_request.exit_code)
    except click.ClickException as error:
        error.show()
        from lockstep.cli.output import print_json

        if json_output:  # a script piping --json into a parser must get a document here too
            with contextlib.suppress(OSError):
                print_json(
                    {"error": error.format_message(), "hint": _usage_hint(error), "exit_code": int(ExitCode.USAGE)}
                )
        sys.exit(ExitCode.USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):
        from lockstep.cli.output import error_console, print_json

        with contextlib.suppress(OSError):
            error_console.print("lockstep: interrupted")
            if json_output:
                interrupted = int(ExitCode.INTERRUPTED)
                print_json({"error": "interrupted", "hint": "run the command again", "exit_code": interrupted})
        sys.exit(ExitCode.INTERRUPTED)
    except LockstepError as error:
        from lockstep.cli.output import error_console, print_json

        # Messages quote command output and server errors (a failed hook's or migration's): the
        # process's redactor knows the environment's secrets and those the command read from files.
        redactor = process_redactor()
        message = redactor.redact(error.message)
        hint = None if error.hint is None else redactor.redact(error.hint)
        # A reader that went away must not turn the documented exit code into a traceback.
        with contextlib.suppress(OSError):
            if json_output:
                result = {} if error.result is None else redactor.redact_document(error.result.to_document())
                print_json({**result, "error": message, "hint": hint, "exit_code": int(error.exit_code)})
            # soft_wrap: one line whatever the terminal width, so scripts and logs get it whole.
            line = f"lockstep: error: {message}" + (f": {hint}" if hint else "")
            error_console.print(line, markup=False, soft_wrap=True)
        if debug:  # the traceback, but still the documented exit code: scripts branch on it
            traceback.print_exc()
        sys.exit(error.exit_code)
    except BrokenPipeError:
        sys.exit(ExitCode.OK)
    except Exception as error:  # a bug: say so plainly, show the traceback only with --debug
        if debug:
            raise
        from lockstep.cli.output import error_console, print_json

        message = f"internal error: {type(error).__name__}: {process_redactor().redact(str(error))}"
        with contextlib.suppress(OSError):
            if json_output:
                failed = int(ExitCode.FAILED)
                print_json({"error": message, "hint": "run with --debug for details", "exit_code": failed})
            error_console.print(f"lockstep: {message} (run with --debug for details)", markup=False, soft_wrap=True)
        sys.exit(ExitCode.FAILED)


def _usage_hint(error: click.ClickException) -> str | None:
    """Where the usage of the command that refused its arguments is explained."""
    context = getattr(error, "ctx", None)
    return f"see `{context.command_path} --help`" if isinstance(context, click.Context) else None
