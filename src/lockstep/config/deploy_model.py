"""The deploy half of `lockstep.toml`: the app's components, the traffic switch, deploy steps, policy.

Like model.py, every field carries its default, a description and an example: the sample config
and docs/config.md are generated from them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DataRollback = Literal["auto", "ask", "never"]
VerifyLevelName = Literal["none", "structure", "data", "restore"]
TrafficKind = Literal["builtin", "nginx", "haproxy"]
HOOK_NAMES = ("pre-deploy", "pre-switch", "post-deploy", "post-rollback", "deploy-failed")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HealthCheckConfig(_Section):
    """How to tell that a component is ready: exactly one of http, tcp or command."""

    http: str | None = Field(
        default=None,
        description="HTTP path requested on the component's port; redirects are not followed.",
        examples=["/health"],
    )
    tcp: bool = Field(default=False, description="Only check that the port accepts connections.", examples=[True])
    command: str | None = Field(
        default=None,
        description="A command that exits 0 when the component is healthy (run in the release directory).",
        examples=["./bin/check-worker"],
    )
    expect_status: int = Field(default=200, description="HTTP status the check expects.", examples=[204])
    body_contains: str | None = Field(
        default=None, description="Text the HTTP response body must contain.", examples=["ok"]
    )
    timeout: float = Field(default=2.0, gt=0, description="Seconds one check may take.", examples=[5.0])
    interval: float = Field(default=0.5, gt=0, description="Seconds between checks.", examples=[1.0])
    passes: int = Field(default=3, ge=1, description="Consecutive passes needed to call it healthy.", examples=[5])
    start_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a new release has to become healthy.", examples=[120.0]
    )

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> HealthCheckConfig:
        kinds = [self.http is not None, self.tcp, self.command is not None]
        if sum(kinds) > 1:
            raise ValueError("a health check is one of http, tcp or command: keep only one")
        if self.http is not None and not self.http.startswith("/"):
            raise ValueError("health.http is a path on the component's port and starts with /, e.g. /health")
        return self


class ComponentConfig(_Section):
    """One process of the app (e.g. web, worker); each release runs every component."""

    command: str = Field(
        description=(
            "Command that runs the component in the release directory. {port} is replaced by the slot's "
            "port, which is also in the PORT environment variable."
        ),
        examples=["python3 app.py --port {port}"],
    )
    ports: list[int] = Field(
        default_factory=list,
        description=(
            "The blue and green ports of a component that serves on a port (two distinct ports). "
            "Leave it out for a component without a port, such as a worker."
        ),
        examples=[[9101, 9102]],
    )
    health: HealthCheckConfig | None = Field(
        default=None,
        description="Readiness check. Default: HTTP GET / on the port, or 'still running' without a port.",
        examples=[{"http": "/health", "body_contains": "ok"}],
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for this component; {release}, {shared} and {port} are replaced.",
        examples=[{"WORKERS": "2"}],
    )
    depends_on: list[str] = Field(
        default_factory=list,
        description="Components that start before this one (and stop after it).",
        examples=[["web"]],
    )
    stop_timeout: float = Field(
        default=10.0, gt=0, description="Seconds between SIGTERM and SIGKILL when stopping.", examples=[30.0]
    )

    @field_validator("ports")
    @classmethod
    def _two_ports(cls, ports: list[int]) -> list[int]:
        if ports and (len(ports) != 2 or ports[0] == ports[1]):
            raise ValueError("ports lists two distinct ports, blue then green, e.g. [9101, 9102]")
        for port in ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return ports


class AppConfig(_Section):
    """The application lockstep deploys: its releases and the processes each release runs."""

    name: str | None = Field(
        default=None, description="The app's name. Default: the name of lockstep.toml's directory.", examples=["shop"]
    )
    state_directory: str = Field(
        default=".lockstep/state",
        description=(
            "Where releases, shared files, the agent's socket and state and the deploy history live "
            "(relative to lockstep.toml's directory), one subdirectory per environment."
        ),
        examples=["/srv/shop/lockstep"],
    )
    source: str | None = Field(
        default=None,
        description=(
            "The app's directory inside the git repository; a release is `git archive` of this "
            "directory at the deployed commit. Default: the directory of lockstep.toml."
        ),
        examples=["backend"],
    )
    keep_releases: int = Field(default=5, ge=2, description="Release directories to keep.", examples=[10])
    shared: list[str] = Field(
        default_factory=list,
        description=(
            "Paths kept in the environment's shared/ directory across releases and linked into each "
            "release (uploads, .env), Capistrano-style."
        ),
        examples=[["uploads", ".env"]],
    )
    build: str | None = Field(
        default=None, description="Build command, run in the new release directory.", examples=["npm ci"]
    )
    migrate: str | None = Field(
        default=None,
        description="Migration command, run in the new release directory after the pre-deploy snapshot.",
        examples=["alembic upgrade head"],
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Environment for the build, the migrations and every component; {release} and {shared} "
            "are replaced by the release and shared directories."
        ),
        examples=[{"DATABASE_PATH": "{shared}/app.db"}],
    )
    components: dict[str, ComponentConfig] = Field(
        default_factory=dict,
        description="The processes of a release, by name ([app.components.NAME]).",
        examples=[{"web": {"command": "python3 app.py", "ports": [9101, 9102]}}],
    )

    @field_validator("components")
    @classmethod
    def _check_components(cls, components: dict[str, ComponentConfig]) -> dict[str, ComponentConfig]:
        for name, component in components.items():
            if not _NAME.match(name):
                raise ValueError(f"component name {name!r}: use letters, digits, - and _")
            for dependency in component.depends_on:
                if dependency not in components:
                    raise ValueError(f"components.{name}.depends_on names {dependency!r}, which is not a component")
        order_components(components)  # raises on a cycle
        return components


def order_components(components: dict[str, ComponentConfig]) -> list[str]:
    """Component names in start order: every component after the ones it depends on."""
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise ValueError("components depend on each other in a cycle: " + " -> ".join((*chain, name)))
        visiting.add(name)
        for dependency in components[name].depends_on:
            visit(dependency, (*chain, name))
        visiting.discard(name)
        ordered.append(name)

    for name in sorted(components):
        visit(name, ())
    return ordered


class TrafficConfig(_Section):
    """The traffic switch that sends users' requests to the active release."""

    kind: TrafficKind = Field(
        default="builtin",
        description='"builtin" (lockstep\'s own reverse proxy), "nginx" or "haproxy".',
        examples=["nginx"],
    )
    listen: str = Field(
        default="127.0.0.1:8080",
        description="HOST:PORT where users reach the app.",
        examples=["0.0.0.0:80"],
    )
    component: str | None = Field(
        default=None,
        description="The component that receives the traffic. Default: the only component with ports.",
        examples=["web"],
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds in-flight requests may take to finish on the old slot.",
        examples=[60.0],
    )
    request_timeout: float = Field(
        default=60.0, gt=0, description="Seconds the built-in proxy waits for a response.", examples=[120.0]
    )
    hold_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds a request may wait while traffic is held for a data rollback (`rollback --with-data`, "
            "or a failed deploy restoring its data); past it, requests get 503 with Retry-After until the "
            "hold ends. Set it above your usual restore time (and, for a system nginx or HAProxy, keep "
            "their upstream read timeout above it)."
        ),
        examples=[120.0],
    )
    mode: Literal["managed", "system"] = Field(
        default="managed",
        description=(
            'nginx and HAProxy: "managed" (lockstep runs its own instance from a generated config) or '
            '"system" (your server includes a file lockstep writes, then lockstep validates and reloads it).'
        ),
        examples=["system"],
    )
    binary: str | None = Field(
        default=None,
        description="nginx or HAProxy executable. Default: nginx / haproxy on PATH.",
        examples=["/usr/sbin/nginx"],
    )
    include_path: str | None = Field(
        default=None,
        description=(
            "System mode: the file lockstep writes (nginx: an `upstream lockstep_active` block to include in "
            "http {}; HAProxy: a `backend lockstep_active` file loaded with an extra -f)."
        ),
        examples=["/etc/nginx/conf.d/lockstep-upstream.conf"],
    )
    config_path: str | None = Field(
        default=None,
        description="System mode: the server's main config, validated with the include before a reload.",
        examples=["/etc/haproxy/haproxy.cfg"],
    )
    reload_command: str | None = Field(
        default=None,
        description="System mode: how to reload the server. Default: `nginx -s reload` / `systemctl reload haproxy`.",
        examples=["systemctl reload nginx"],
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str) -> str:
        host, separator, port = listen.rpartition(":")
        if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen is HOST:PORT, e.g. 127.0.0.1:8080")
        return listen


class SmokeCheckConfig(_Section):
    """One smoke test, run against the new release before it takes traffic: one kind per entry."""

    http: str | None = Field(
        default=None,
        description="Path requested on the new release (or a full https:// URL for a TLS check).",
        examples=["/api/notes"],
    )
    expect_status: int = Field(default=200, description="Expected HTTP status.", examples=[200])
    body_contains: str | None = Field(default=None, description="Text the body must contain.", examples=["notes"])
    max_ms: float | None = Field(default=None, gt=0, description="Slowest acceptable response (ms).", examples=[500])
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Response headers that must be present with these values (e.g. CORS).",
        examples=[{"Access-Control-Allow-Origin": "*"}],
    )
    tls_min_days: int | None = Field(
        default=None,
        ge=0,
        description="For an https:// URL: the certificate must be valid for at least this many more days.",
        examples=[14],
    )
    database: str | None = Field(
        default=None,
        description="Name of a database ([databases.NAME]) that must accept connections.",
        examples=["main"],
    )
    command: str | None = Field(
        default=None, description="A command that must exit 0 (run in the release directory).", examples=["./smoke.sh"]
    )

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> SmokeCheckConfig:
        if sum(value is not None for value in (self.http, self.database, self.command)) != 1:
            raise ValueError("a smoke check has exactly one of http, database or command")
        return self


class DeployConfig(_Section):
    """How `lockstep deploy` checks, watches and hooks into a release."""

    smoke: list[SmokeCheckConfig] = Field(
        default_factory=list,
        description="Smoke tests run against the new release before the switch ([[deploy.smoke]]).",
        examples=[[{"http": "/", "body_contains": "Notes", "max_ms": 1000}]],
    )
    watch_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "After the switch, how long to watch before calling it done; an app of workers only is watched "
            "too (exits, crash loops, health checks; it has no requests for an error rate)."
        ),
        examples=[120.0],
    )
    watch_failures: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed health checks in the watch window that roll back.",
        examples=[5],
    )
    watch_max_exits: int = Field(
        default=0,
        ge=0,
        description=(
            "Unexpected exits of the new release's processes allowed from its health gate to the end of the "
            "watch window (the agent restarts each); one more fails the deploy and rolls it back, before the "
            "switch when it comes first (the pre-switch check, which also wants every process running). 0: "
            "any exit does, so a release that crashes every 20 s is caught even when its health checks pass. "
            "Stops lockstep makes (a retire, a stop) do not count."
        ),
        examples=[1],
    )
    watch_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Share of failed requests (5xx) at the proxy during the watch window that rolls back.",
        examples=[0.01],
    )
    watch_min_requests: int = Field(
        default=20, ge=1, description="Requests needed before the error rate counts.", examples=[100]
    )
    min_free_disk_mb: int = Field(
        default=512,
        ge=0,
        description="Refuse to deploy with less free space in the state directory (MiB).",
        examples=[2048],
    )
    required_env: list[str] = Field(
        default_factory=list,
        description="Environment variables that must be set for a deploy (their values are never shown).",
        examples=[["SECRET_KEY"]],
    )
    lock_stale_after: float = Field(
        default=120.0,
        gt=0,
        description="Seconds without a heartbeat after which a deploy lock is stale.",
        examples=[300.0],
    )
    hooks: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Commands run at pre-deploy, pre-switch, post-deploy, post-rollback and deploy-failed, with "
            "LOCKSTEP_DEPLOY_ID, LOCKSTEP_VERSION, LOCKSTEP_ENV and LOCKSTEP_PERFORMER in their environment. "
            "A failing pre-deploy hook refuses the deploy before it changes anything (exit 2); a failing "
            "pre-switch hook fails it and rolls it back (exit 3); the others only warn. Each may take "
            "hook_timeout seconds; then it and every process it started are killed, and it counts as failed."
        ),
        examples=[{"post-deploy": "./notify-team.sh"}],
    )
    hook_timeout: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Seconds a hook may run. A deploy or rollback holds the environment's lock while its hooks run, "
            "so a hanging hook holds up the next deploy this long."
        ),
        examples=[60.0],
    )

    @field_validator("hooks")
    @classmethod
    def _known_hooks(cls, hooks: dict[str, str]) -> dict[str, str]:
        for name in hooks:
            if name not in HOOK_NAMES:
                raise ValueError(f"unknown hook {name!r}: the hooks are " + ", ".join(HOOK_NAMES))
        return hooks


class PolicyConfig(_Section):
    """What an environment allows; unset keys take the default for the environment's name."""

    confirm: bool | None = Field(
        default=None,
        description="Ask before deploying or rolling back (--yes answers). Default: true in production.",
        examples=[True],
    )
    require_snapshot: bool | None = Field(
        default=None,
        description="Refuse --skip-backup: the pre-deploy snapshot is mandatory. Default: true in production.",
        examples=[True],
    )
    verify_level: VerifyLevelName = Field(
        default="structure",
        description="How deeply the pre-deploy snapshot is verified before migrations run.",
        examples=["restore"],
    )
    data_rollback: DataRollback | None = Field(
        default=None,
        description=(
            'After migrations ran and the deploy fails: "auto" restores the pre-deploy snapshot, "ask" '
            'asks first (auto without a TTY is refused: it keeps the data), "never" keeps the data. '
            'Default: "ask" in production, "auto" elsewhere.'
        ),
        examples=["ask"],
    )
    approval_command: str | None = Field(
        default=None,
        description="A command that must exit 0 before a deploy starts (e.g. a CI status check).",
        examples=["gh pr checks --required"],
    )


class EffectivePolicy(BaseModel):
    """A PolicyConfig with every default filled in for one environment."""

    confirm: bool
    require_snapshot: bool
    verify_level: VerifyLevelName
    data_rollback: DataRollback
    approval_command: str | None


def effective_policy(policy: PolicyConfig, environment: str) -> EffectivePolicy:
    """Production is strict unless told otherwise; every other environment is easy-going."""
    production = environment == "production"
    return EffectivePolicy(
        confirm=production if policy.confirm is None else policy.confirm,
        require_snapshot=production if policy.require_snapshot is None else policy.require_snapshot,
        verify_level=policy.verify_level,
        data_rollback=("ask" if production else "auto") if policy.data_rollback is None else policy.data_rollback,
        approval_command=policy.approval_command,
    )
