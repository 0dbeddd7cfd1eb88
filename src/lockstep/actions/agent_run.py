"""`lockstep agent`: serve one environment until told to stop; the app keeps running after it."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.abandoned_watch import AbandonedWatch
from lockstep.agent.dashboard import DashboardServer, start_dashboard
from lockstep.agent.rpo_watch import RpoWatch
from lockstep.agent.schedules import Scheduler
from lockstep.agent.server import AgentServer
from lockstep.agent.service import AgentService

POLL_INTERVAL = 0.5


def error_line(on_ready: Callable[[str], None] | None, line: str) -> None:
    """The agent's log is its stderr; on_ready is how the CLI prints there."""
    if on_ready is not None:
        on_ready(f"warning: {line}")


def stop_command(context: EnvironmentContext) -> str:
    """The command that stops this environment's agent, as a refused second agent suggests it."""
    config = f" -c {shlex.quote(str(context.config_path))}" if context.config_path is not None else ""
    return f"lockstep agent{config} --env {shlex.quote(context.environment)} stop"


def run_agent(context: EnvironmentContext, on_ready: Callable[[str], None] | None = None) -> bool:
    """Adopt what runs, serve the API and supervise until shutdown or Ctrl-C/SIGTERM.

    Returns True when the shutdown request asked to stop the app too (and it was stopped).
    Stopping the agent otherwise leaves the processes and the proxy running, to be adopted again.
    """
    service = AgentService(context.config, context.layout)
    server = AgentServer(service, context.layout.agent_socket, stop_command(context))
    serving = threading.Thread(target=server.serve_forever, name="agent-api", daemon=True)
    scheduler = Scheduler(context)  # [[schedules]]: catches up a missed run on its first tick
    rpo_watch = RpoWatch(context, scheduler.notifier, warn=lambda line: error_line(on_ready, line))
    abandoned_watch = AbandonedWatch(context, service, log=lambda line: error_line(on_ready, line))
    dashboard: DashboardServer | None = None
    try:
        adopted = service.adopt()
        serving.start()
        dashboard = start_dashboard(context, service)  # agent.dashboard_listen: the web dashboard and /metrics
        if on_ready is not None:
            on_ready(
                f"agent for {context.environment!r} listening on {context.layout.agent_socket}"
                + (f"; adopted {adopted} running processes" if adopted else "")
                + (f"; dashboard on {dashboard.url}" if dashboard is not None else "")
            )
        while not server.stop_requested.wait(POLL_INTERVAL):
            service.poll()
            scheduler.tick()
            rpo_watch.tick()
            abandoned_watch.tick()
    except KeyboardInterrupt:
        pass
    finally:
        if dashboard is not None:
            dashboard.shutdown()
        scheduler.close()
        rpo_watch.close()
        abandoned_watch.close()
        server.shutdown()
        if server.stop_apps_requested:
            service.shutdown_everything()
        service.close()
    return server.stop_apps_requested
