"""docs/repository.md is generated from the commands; it must match them exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_command_reference_matches_the_code() -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
