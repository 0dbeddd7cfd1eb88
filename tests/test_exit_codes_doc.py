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
