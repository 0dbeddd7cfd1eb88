"""GitHub Actions: an annotation per event and a line in the job's step summary, only inside Actions.

Outside a workflow run (GITHUB_ACTIONS is not "true") the channel does nothing, so one config works
both in CI and on a workstation. Annotations are workflow commands on stdout (`::error::`,
`::warning::`, `::notice::`); the step summary is the markdown file GITHUB_STEP_SUMMARY names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from lockstep.notify import ChannelSetup, DeliveryError
from lockstep.notify.config import ChannelConfig

_SUMMARY_ICONS = {"error": "❌", "warning": "⚠️", "info": "✅"}


def _escape_data(text: str) -> str:
    """Workflow-command message escaping, as in @actions/core."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(document: Mapping[str, Any]) -> str:
    """The workflow command for an event: `::error title=...::summary` and the like."""
    level = {"error": "error", "warning": "warning"}.get(str(document.get("severity")), "notice")
    environment = document.get("environment")
    title = f"lockstep {document.get('kind')}" + (f" ({environment})" if environment else "")
    return f"::{level} title={_escape_property(title)}::{_escape_data(str(document.get('summary', '')))}"


def summary_line(document: Mapping[str, Any]) -> str:
    """One markdown list item for the step summary."""
    icon = _SUMMARY_ICONS.get(str(document.get("severity")), "ℹ️")
    environment = document.get("environment")
    parts = [f"- {icon} **{document.get('kind')}**"]
    if environment:
        parts.append(f"`{environment}`")
    summary = " ".join(str(document.get("summary", "")).split()).replace("|", "\\|")
    parts.append(f"— {summary}")
    if document.get("deploy_id"):
        parts.append(f"(deploy `{document['deploy_id']}`)")
    parts.append(f"<sub>{document.get('at')}</sub>")
    return " ".join(parts)


class GitHubActionsChannel:
    """Writes annotations to stdout and appends to the step summary, when running inside GitHub Actions."""

    def __init__(self, active: bool, summary_path: Path | None, stdout: Callable[[], TextIO]) -> None:
        self._active = active
        self._summary_path = summary_path
        self._stdout = stdout

    def send(self, document: Mapping[str, Any], timeout: float) -> None:
        """Print the annotation and append the summary line; nothing outside Actions."""
        if not self._active:
            return
        stream = self._stdout()
        stream.write(annotation(document) + "\n")
        stream.flush()
        if self._summary_path is None:
            return
        try:
            descriptor = os.open(self._summary_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, (summary_line(document) + "\n").encode("utf-8"))
            finally:
                os.close(descriptor)
        except OSError as error:
            raise DeliveryError(
                f"cannot append to the step summary {self._summary_path}: {error.strerror or error}", permanent=True
            ) from None


def build(config: ChannelConfig, setup: ChannelSetup) -> GitHubActionsChannel:
    """Active only when GITHUB_ACTIONS=true in the environment lockstep runs in."""
    summary = setup.environ.get("GITHUB_STEP_SUMMARY") or None
    return GitHubActionsChannel(
        active=setup.environ.get("GITHUB_ACTIONS") == "true",
        summary_path=None if summary is None else Path(summary),
        stdout=setup.stdout,
    )
