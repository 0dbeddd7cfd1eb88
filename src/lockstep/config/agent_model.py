"""The agent's half of `lockstep.toml`: its dashboard and metrics, and the work it runs on a schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ScheduledJob = Literal["backup", "verify", "forget"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentConfig(_Section):
    """What the agent serves besides its private socket."""

    dashboard_listen: str | None = Field(
        default=None,
        description=(
            "HOST:PORT where the agent serves the web dashboard and /metrics (Prometheus). Leave it out for neither."
        ),
        examples=["127.0.0.1:8790"],
    )
    dashboard_token_env: str = Field(
        default="LOCKSTEP_DASHBOARD_TOKEN",
        description=(
            "Environment variable (of the agent) holding the token the dashboard asks for; "
            "without it set, the dashboard refuses to start."
        ),
        examples=["SHOP_DASHBOARD_TOKEN"],
    )
    metrics_without_token: bool = Field(
        default=False,
        description="Serve /metrics without the token (for a Prometheus that cannot send one).",
        examples=[True],
    )
    rpo_hours: float = Field(
        default=26.0,
        gt=0,
        description=(
            "Recovery point objective: the newest good snapshot may be at most this old before `doctor` fails."
        ),
        examples=[6.0],
    )

    @field_validator("dashboard_listen")
    @classmethod
    def _check_listen(cls, listen: str | None) -> str | None:
        if listen is None:
            return None
        host, separator, port = listen.rpartition(":")
        if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("dashboard_listen is HOST:PORT, e.g. 127.0.0.1:8790")
        return listen


class ScheduleConfig(_Section):
    """One job the agent runs on a schedule ([[schedules]])."""

    job: ScheduledJob = Field(
        description='"backup" (a scheduled snapshot, like `lockstep backup`), "verify" (of the newest '
        'snapshot) or "forget" (apply the retention policy, then prune).',
        examples=["backup"],
    )
    cron: str = Field(
        description=(
            "When, as a five-field cron expression (minute hour day-of-month month day-of-week; names such as "
            "mon-fri and jan, steps such as */15, or @hourly, @daily, @weekly, @monthly), in local time. "
            "An occurrence missed while the agent was down runs once when it starts; a schedule with no "
            "recorded run (new or changed) runs as soon as the agent starts."
        ),
        examples=["0 2 * * *"],
    )
    level: Literal["structure", "data", "restore"] = Field(
        default="restore",
        description="For verify jobs: how deeply to verify.",
        examples=["data"],
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, cron: str) -> str:
        """A typo in a schedule is a config error at load time, not a job that silently never runs."""
        from lockstep.agent.cron import CronExpression  # lazily: loading a config needs no agent code otherwise

        CronExpression.parse(cron)
        return cron
