"""The shared free-port helper: ports it hands out are not handed out again while others are free."""

from __future__ import annotations

import os
import socket

import pytest

from tests.deploy import conftest
from tests.deploy.conftest import free_ports


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_run(length: int) -> int:
    """The first port of `length` consecutive free ones (inside LOCKSTEP_TEST_PORTS when set)."""
    wanted = os.environ.get("LOCKSTEP_TEST_PORTS")
    low, high = (int(part) for part in wanted.split("-")) if wanted else (40000, 60000)
    for start in range(low, high - length + 2):
        if all(_bindable(port) for port in range(start, start + length)):
            return start
    pytest.fail(f"no {length} consecutive free ports between {low} and {high}")


def test_a_port_handed_out_is_not_handed_out_again_while_others_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test took the dashboard's port, then make_project took three more from the same
    LOCKSTEP_TEST_PORTS range: one of them could be the dashboard's (it is probed, not held), and
    the agent then found its dashboard port "held" by a component (tests/agent/test_metrics.py)."""
    start = _free_run(4)
    monkeypatch.setenv("LOCKSTEP_TEST_PORTS", f"{start}-{start + 3}")
    for _ in range(5):
        monkeypatch.setattr(conftest, "_HANDED_OUT", {}, raising=False)
        (dashboard,) = free_ports(1)
        project = free_ports(3)
        assert sorted([dashboard, *project]) == list(range(start, start + 4))
    # The range used up: the longest-handed-out ports come again, rather than an error.
    again = free_ports(2)
    assert again == [dashboard, project[0]]
