"""The agent's web dashboard and Prometheus metrics, served over TCP on `agent.dashboard_listen`.

Everything behind a token: the page asks for it once and keeps a session cookie; `/metrics`
also takes it as a bearer token (or none with `agent.metrics_without_token`).
"""

from __future__ import annotations

from lockstep.agent.dashboard.server import DashboardServer, start_dashboard

__all__ = ["DashboardServer", "start_dashboard"]
