"""The `lockstep status` traffic line in the states the agent reports."""

from __future__ import annotations

from lockstep.cli.status import describe_environment, describe_stopped, describe_traffic

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


def _paused(**mark: object) -> dict[str, object]:
    return {
        "operation": "deploy",
        "id": "20261124-0800-abc",
        "slot": "blue",
        "release_id": "r1",
        "components": ["jobs"],
        "kept_stopped": None,
        "retry_every": "30 s, doubling up to 600 s",
        **mark,
    }


def test_workers_whose_restart_failed_say_why_and_that_the_agent_retries() -> None:
    """They were only "STOPPED ... the last operation below says why", which did not say that
    the agent tries again, nor when (pipeline/paused_workers_retry.py)."""
    line = describe_stopped("blue", ["jobs"], [_paused(restart_failed="jobs: exited at start", attempts=2)])
    assert "deploy 20261124-0800-abc stopped them for a data restore" in line
    assert "starting them again failed (jobs: exited at start, 2 retries failed)" in line
    assert "the agent tries again within seconds" in line and "30 s, doubling up to 600 s" in line


def test_workers_held_for_a_coordinated_deploy_say_what_they_wait_for() -> None:
    line = describe_stopped("blue", ["jobs"], [_paused(waiting_for="its lock is held by deploy x")])
    assert "stay stopped while the coordinated deploy goes on (its lock is held by deploy x)" in line


def test_workers_kept_stopped_on_purpose_point_at_the_last_operation() -> None:
    line = describe_stopped("blue", ["jobs"], [_paused(kept_stopped="the data could not be put back")])
    assert "the last operation below says why" in line and "tries again" not in line


def test_workers_that_do_not_stay_up_say_so_and_when_the_agent_judges_them() -> None:
    """A worker that exits a second after its restart is not "STOPPED" (the agent has it), yet
    not up: the line says so, why, and that the agent counts it as running once it stays up."""
    mark = _paused(restart_failed="jobs exited after it was started: exited with code 1", attempts=1)
    line = describe_stopped("blue", ["jobs"], [mark], "NOT STAYING UP")
    assert line.startswith("  NOT STAYING UP in slot blue: jobs — its release runs without them; "), line
    assert "starting them again failed (jobs exited after it was started: exited with code 1, 1 retry failed)" in line
    settling = describe_stopped("blue", ["jobs"], [{**mark, "settle_until": 1.0, "settle_seconds": "5 s"}])
    assert "the agent tries again now: it started them, and counts them as running once they stayed up 5 s" in settling
