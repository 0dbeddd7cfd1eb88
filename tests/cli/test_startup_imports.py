"""What a command imports before it does anything: every lockstep process pays for it.

`lockstep --help` once imported every action, and with them the config models, the repository's
crypto and the agent's server (about 0.4 CPU-s); deploy tools and the test suite start lockstep
thousands of times. These tests run the real entry point in a child process and read its
`sys.modules`, so a module-level import that drags a heavy module back in fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lockstep.cli.main import COMMAND_MODULES
from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, run_lockstep

# Runs lockstep's entry point as `python -m lockstep` does, then writes the names of the modules
# the process imported to the file named by its first argument.
PROBE = textwrap.dedent(
    """
    import json, sys
    report, *arguments = sys.argv[1:]
    sys.argv = ["lockstep", *arguments]
    try:
        from lockstep.cli.main import main
        main()
    finally:
        with open(report, "w") as file:
            json.dump(sorted(sys.modules), file)
    """
)

# Third-party libraries that only some commands need: database drivers, SSH, HTTP servers, crypto.
HEAVY_LIBRARIES = ("psycopg", "asyncssh", "aiohttp", "cryptography", "pydantic", "zstandard")
# lockstep's own layers below the CLI: the config models, actions, pipeline and adapters.
LOCKSTEP_LAYERS = tuple(
    f"lockstep.{package}"
    for package in ("actions", "pipeline", "config", "repository", "databases", "storage", "agent", "notify")
)


def imported_modules(arguments: list[str], tmp_path: Path, cwd: Path | None = None) -> tuple[int, set[str]]:
    """The exit code of `lockstep ARGUMENTS` and every module it imported."""
    report = tmp_path / "modules.json"
    environment = {**os.environ, "LOCKSTEP_PASSWORD": TEST_PASSWORD, "LOCKSTEP_SCRYPT_N": "1024"}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *arguments],
        capture_output=True,
        env=environment,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    modules: list[str] = json.loads(report.read_text())
    return completed.returncode, set(modules)


def loaded_from(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    """The modules that are one of `roots` or inside one of them."""
    return sorted(name for name in modules if any(name == root or name.startswith(root + ".") for root in roots))


@pytest.mark.parametrize(
    "arguments",
    [
        ["--help"],
        ["--version"],
        ["lock", "--help"],
        ["backup", "--help"],
        ["snapshot", "restore", "--help"],
        ["snapshot", "diff", "--help"],
    ],
)
def test_help_and_version_import_no_heavy_library_and_no_lower_layer(arguments: list[str], tmp_path: Path) -> None:
    """Help texts and the version come from Click alone: no driver, no crypto, no config models."""
    code, modules = imported_modules(arguments, tmp_path)
    assert code == ExitCode.OK
    assert loaded_from(modules, HEAVY_LIBRARIES) == []
    assert loaded_from(modules, LOCKSTEP_LAYERS) == []


def test_version_does_not_load_rich(tmp_path: Path) -> None:
    """`--version` prints through Click; rich (about 25 ms) is for commands that print tables."""
    code, modules = imported_modules(["--version"], tmp_path)
    assert code == ExitCode.OK
    assert loaded_from(modules, ("rich", "lockstep.cli.output")) == []


def test_help_still_lists_every_command() -> None:
    """Lazily loaded commands still show in `lockstep --help` with their one-line help."""
    completed = run_lockstep(["--help"])
    assert completed.returncode == ExitCode.OK
    listed = completed.out.split("Commands:", 1)[1]
    first_words = [line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.strip()]
    assert first_words == sorted(COMMAND_MODULES)
    assert "Coordinated snapshots" in listed  # the group's own help, not only its name


def test_lock_status_imports_no_database_driver_ssh_or_http_server(tmp_path: Path) -> None:
    """`lock status` reads the config and the repository: nothing of PostgreSQL, SSH or aiohttp."""
    project = tmp_path / "shop"
    project.mkdir()
    (project / "lockstep.toml").write_text(
        f'[repository]\nurl = "{tmp_path / "repository"}"\n\n'
        '[databases.main]\nurl = "postgresql://postgres@127.0.0.1:5432/postgres"\n'
    )
    initialised = run_lockstep(
        ["repo", "init", "-r", str(tmp_path / "repository")], env={"LOCKSTEP_PASSWORD": TEST_PASSWORD}
    )
    assert initialised.returncode == ExitCode.OK, initialised.err
    code, modules = imported_modules(["lock", "status"], tmp_path, cwd=project)
    assert code == ExitCode.OK
    assert loaded_from(modules, ("psycopg", "asyncssh", "aiohttp", "lockstep.databases.postgresql")) == []
