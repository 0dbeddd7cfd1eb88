"""From the config to what the agent runs: each component's argv, environment, port and health
check for one release in one slot. Deploys and rollbacks both start releases this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockstep.config import ProjectConfig
from lockstep.config.deploy_model import ComponentConfig, order_components
from lockstep.errors import UsageError
from lockstep.health.checks import CommandCheck, HealthCheck, HttpCheck, TcpCheck, describe_check
from lockstep.pipeline.releases import substitute
from lockstep.process import Command

SLOT_INDEX = {"blue": 0, "green": 1}


@dataclass(frozen=True)
class ComponentPlan:
    """One component of a release in a slot, ready to start and check."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int | None
    stop_timeout: float
    health: HealthCheck | None  # None: "still running" is the only check
    passes: int
    interval: float
    start_timeout: float

    def launch_document(self) -> dict[str, Any]:
        return {
            "component": self.name,
            "argv": list(self.argv),
            "env": self.env,
            "port": self.port,
            "stop_timeout": self.stop_timeout,
        }


def describe_commands(plans: list[ComponentPlan]) -> str:
    """What a slot start runs, for plans (deploy and rollback dry runs): each component's command."""
    return "; ".join(
        f"{plan.name}: {' '.join(plan.argv)}" + (f" (port {plan.port})" if plan.port else "") for plan in plans
    )


def describe_health_gate(plans: list[ComponentPlan]) -> str:
    """What each component must pass before it may take traffic, for plans."""
    return "; ".join(
        f"{plan.name}: " + (f"{describe_check(plan.health)}, {plan.passes} passes" if plan.health else "keeps running")
        for plan in plans
    )


def traffic_component(config: ProjectConfig) -> str | None:
    """The component that receives traffic: traffic.component, or the only one with ports."""
    components = config.app.components
    if config.traffic.component is not None:
        if config.traffic.component not in components:
            raise UsageError(
                f"traffic.component names {config.traffic.component!r}, which is not in [app.components]",
                "name one of: " + ", ".join(sorted(components)),
            )
        if not components[config.traffic.component].ports:
            raise UsageError(f"traffic.component {config.traffic.component!r} has no ports to send traffic to")
        return config.traffic.component
    with_ports = [name for name, component in components.items() if component.ports]
    if len(with_ports) > 1:
        raise UsageError(
            "several components have ports: say which one receives traffic",
            'set traffic.component = "' + with_ports[0] + '" in lockstep.toml',
        )
    return with_ports[0] if with_ports else None


def runs_workers_only(config: ProjectConfig, active_processes: list[dict[str, Any]] | None) -> bool:
    """Whether nothing answers at the proxy's address: no component has a port configured, and
    none with a port runs in the active slot (the release as deployed tells: the config may have
    lost its ports since). Then `lockstep status` and the dashboard offer no URL."""
    if any(component.ports for component in config.app.components.values()):
        return False
    return not any(process.get("port") is not None for process in active_processes or [])


def app_environment(config: ProjectConfig, release: Path, shared: Path) -> dict[str, str]:
    """app.env with {release} and {shared} filled in (for build, migrations and hooks)."""
    return {name: substitute(value, release, shared) for name, value in config.app.env.items()}


def plan_components(
    config: ProjectConfig, release: Path, shared: Path, slot: str, only: list[str] | None = None
) -> list[ComponentPlan]:
    """Every component (or those in `only`) in start order, with the slot's ports."""
    if not config.app.components:
        raise UsageError(
            "lockstep.toml has no [app.components]: nothing to run",
            'add e.g. [app.components.web] with command = "..." and ports = [9101, 9102]',
        )
    base_environment = app_environment(config, release, shared)
    plans = []
    for name in order_components(config.app.components):
        if only is not None and name not in only:
            continue
        component = config.app.components[name]
        port = component.ports[SLOT_INDEX[slot]] if component.ports else None
        env = {**base_environment, **{key: substitute(v, release, shared, port) for key, v in component.env.items()}}
        argv = tuple(substitute(argument, release, shared) for argument in Command.parse(component.command).argv)
        plans.append(_plan(name, component, argv, env, port, release))
    return plans


def _plan(
    name: str, component: ComponentConfig, argv: tuple[str, ...], env: dict[str, str], port: int | None, release: Path
) -> ComponentPlan:
    health = component.health
    check: HealthCheck | None
    if health is None:
        check = HttpCheck(url=f"http://127.0.0.1:{port}/") if port is not None else None
        passes, interval, start_timeout = 3, 0.5, 60.0
    else:
        passes, interval, start_timeout = health.passes, health.interval, health.start_timeout
        if health.http is not None:
            if port is None:
                raise UsageError(f"components.{name}.health.http needs ports on the component")
            check = HttpCheck(
                url=f"http://127.0.0.1:{port}{health.http}",
                expect_status=health.expect_status,
                body_contains=health.body_contains,
                timeout=health.timeout,
            )
        elif health.tcp:
            if port is None:
                raise UsageError(f"components.{name}.health.tcp needs ports on the component")
            check = TcpCheck(host="127.0.0.1", port=port, timeout=health.timeout)
        elif health.command is not None:
            check = CommandCheck(argv=Command.parse(health.command).argv, timeout=health.timeout, cwd=release, env=env)
        else:
            check = HttpCheck(url=f"http://127.0.0.1:{port}/") if port is not None else None
    return ComponentPlan(
        name=name,
        argv=argv,
        env=env,
        port=port,
        stop_timeout=component.stop_timeout,
        health=check,
        passes=passes,
        interval=interval,
        start_timeout=start_timeout,
    )
