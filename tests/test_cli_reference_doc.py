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


def test_the_reference_documents_the_agent_itself_and_the_global_options() -> None:
    """`lockstep agent` runs the agent (its group has -c and --env), and --json / --debug go before
    the command: a reference of only the leaf commands left out the one users start first."""
    text = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    assert "\n## `lockstep agent`\n" in text
    assert "Usage: lockstep agent [OPTIONS] COMMAND [ARGS]..." in text
    assert "\n## `lockstep`\n" in text
    assert "--debug" in text
    assert "-h, --help" in text  # as the commands print it
