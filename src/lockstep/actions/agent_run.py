"""`lockstep agent`: serve one environment until told to stop; the app keeps running after it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.server import AgentServer
from lockstep.agent.service import AgentService

POLL_INTERVAL = 0.5


def run_agent(context: EnvironmentContext, on_ready: Callable[[str], None] | None = None) -> bool:
    """Adopt what runs, serve the API and supervise until shutdown or Ctrl-C/SIGTERM.

    Returns True when the shutdown request asked to stop the app too (and it was stopped).
    Stopping the agent otherwise leaves the processes and the proxy running, to be adopted again.
    """
    service = AgentService(context.config, context.layout)
    server = AgentServer(service, context.layout.agent_socket)
    serving = threading.Thread(target=server.serve_forever, name="agent-api", daemon=True)
    try:
        adopted = service.adopt()
        serving.start()
        if on_ready is not None:
            on_ready(
                f"agent for {context.environment!r} listening on {context.layout.agent_socket}"
                + (f"; adopted {adopted} running processes" if adopted else "")
            )
        while not server.stop_requested.wait(POLL_INTERVAL):
            service.poll()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        if server.stop_apps_requested:
            service.shutdown_everything()
        service.close()
    return server.stop_apps_requested
