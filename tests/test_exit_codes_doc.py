"""docs/exit-codes.md is the contract scripts rely on: it must list exactly the codes in ExitCode."""

from __future__ import annotations

import re
from pathlib import Path

from lockstep.exit_codes import ExitCode

DOC = Path(__file__).resolve().parent.parent / "docs" / "exit-codes.md"


def test_every_exit_code_is_documented_with_its_number_and_name() -> None:
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", DOC.read_text(), flags=re.MULTILINE)
    documented = {name: int(number) for number, name in rows}
    assert documented == {code.name: int(code) for code in ExitCode}


def test_the_commands_the_table_suggests_exist() -> None:
    """Each `lockstep ...` in the table is a real command; an environment's deploy lock, which
    exit code 4 also reports, is released with `lockstep lock release`, not `repo unlock`."""
    import click

    from lockstep.cli.main import cli

    text = DOC.read_text()
    suggested = re.findall(r"`lockstep ([a-z][a-z -]*[a-z])", text)
    assert suggested
    for words in suggested:
        command: click.Command = cli
        for word in words.split():
            if not isinstance(command, click.Group):
                break
            found = command.get_command(click.Context(command), word)
            assert found is not None, f"`lockstep {words}`: no command {word!r}"
            command = found
    assert "lockstep lock release" in text
