"""The `lockstep status` traffic line in the states the agent reports."""

from __future__ import annotations

from lockstep.cli.status import describe_environment, describe_traffic

BUILTIN = {"kind": "builtin", "listen": "127.0.0.1:8000"}


def test_a_serving_proxy_names_its_upstream_port() -> None:
    line = describe_traffic({**BUILTIN, "running": True, "active_port": 8001}, "blue")
    assert line == "  traffic: builtin on 127.0.0.1:8000, port 8001"


def test_an_active_slot_without_a_port_says_why_there_is_no_upstream() -> None:
    """An active slot whose components have no port (workers only): "port None" said nothing."""
    line = describe_traffic({**BUILTIN, "running": True, "active_port": None}, "blue")
    assert "None" not in line and "no upstream" in line


def test_a_stopped_proxy_with_an_active_slot_is_an_outage() -> None:
    line = describe_traffic({**BUILTIN, "running": False, "active_port": None}, "green")
    assert "None" not in line and "NOT RUNNING: requests are refused" in line


def test_a_fresh_environment_is_not_reported_as_an_outage() -> None:
    line = describe_traffic({**BUILTIN, "running": False, "active_port": None}, None)
    assert line == "  traffic: builtin on 127.0.0.1:8000 — not started: the first deploy starts it"


def test_an_active_slot_of_workers_only_is_not_an_outage() -> None:
    """A worker-only app has an active slot (it deploys blue-green) but never starts the proxy."""
    line = describe_traffic({**BUILTIN, "running": False, "active_port": None}, "green", workers_only=True)
    assert line == (
        "  traffic: builtin on 127.0.0.1:8000 — not used: the active slot runs workers only (no component has a port)"
    )


def test_a_fresh_environment_of_workers_only_gets_no_proxy_from_its_first_deploy() -> None:
    """It said "the first deploy starts it" of a proxy no deploy of an app without ports starts."""
    line = describe_traffic({**BUILTIN, "running": False, "active_port": None}, None, workers_only=True)
    assert line == (
        "  traffic: builtin on 127.0.0.1:8000 — not used: no component has a port (workers only), "
        "so no deploy starts it"
    )


def test_the_first_line_names_the_url_of_an_app_with_a_port() -> None:
    line = describe_environment({"environment": "test", "url": "http://127.0.0.1:8000/", "workers_only": False})
    assert line == "environment test: http://127.0.0.1:8000/"


def test_the_first_line_of_an_app_of_workers_only_offers_no_url() -> None:
    """It printed the proxy's address, where nothing ever answers for an app without ports."""
    line = describe_environment({"environment": "test", "url": None, "workers_only": True})
    assert line == "environment test: workers only, no URL (no component has a port)"
    assert "http" not in line


def test_the_first_line_of_a_project_without_an_app_says_so() -> None:
    """A config with no [app.components] (snapshots and backups only) was called "workers only"."""
    document = {"environment": "production", "url": None, "workers_only": True, "app_configured": False}
    line = describe_environment(document)
    assert line == "environment production: no app to deploy ([app.components] is empty): snapshots and backups only"
