"""/metrics in the Prometheus text exposition format 0.0.4, written by hand.

Counters come from the history (so they survive agent restarts), the snapshot gauges from the
cached repository view, health from the cached checks, and proxy counters from the traffic
switch. A sample whose source is unknown (no repository password, no snapshot yet) is left
out rather than reported as zero, so an alert on it does not fire on missing data.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from lockstep.agent.dashboard.collector import DashboardData, HealthResult, RepositoryView, SnapshotInfo
from lockstep.agent.schedules import schedule_key
from lockstep.pipeline.history import OUTCOMES, OperationRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
SNAPSHOT_KINDS = ("scheduled", "pre-deploy")
LabelSet = tuple[tuple[str, str], ...]


@dataclass
class MetricFamily:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, LabelSet, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, tuple(labels.items()), value))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render(families: Iterable[MetricFamily]) -> str:
    lines = []
    for family in families:
        lines.append(
            f"# HELP {family.name} {family.help.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}"
        )
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            label_text = ",".join(f'{key}="{escape_label(item)}"' for key, item in labels)
            lines.append(
                f"{family.name}{suffix}{{{label_text}}} {format_value(value)}"
                if label_text
                else f"{family.name}{suffix} {format_value(value)}"
            )
    return "\n".join(lines) + "\n"


def operation_families(records: list[OperationRecord], environment: str) -> list[MetricFamily]:
    """Deploys and rollbacks by outcome, and the deploy duration histogram."""
    families = []
    for operation in ("deploy", "rollback"):
        family = MetricFamily(
            f"lockstep_{operation}s_total", "counter", f"{operation.capitalize()}s of this environment by outcome."
        )
        counts = Counter(record.outcome for record in records if record.operation == operation)
        for outcome in OUTCOMES:
            family.add(counts.get(outcome, 0), env=environment, outcome=outcome)
        families.append(family)
    durations = [
        record.duration
        for record in records
        if record.operation == "deploy" and record.duration is not None and record.outcome != "running"
    ]
    histogram = MetricFamily(
        "lockstep_deploy_duration_seconds", "histogram", "How long finished deploys took, from start to the last step."
    )
    for bound in DURATION_BUCKETS:
        histogram.add(
            sum(1 for seconds in durations if seconds <= bound), "_bucket", env=environment, le=format_value(bound)
        )
    histogram.add(len(durations), "_bucket", env=environment, le="+Inf")
    histogram.add(sum(durations), "_sum", env=environment)
    histogram.add(len(durations), "_count", env=environment)
    families.append(histogram)
    last = [record for record in records if record.finished_at is not None]
    if last:
        finished = MetricFamily(
            "lockstep_last_operation_timestamp_seconds", "gauge", "When the last deploy or rollback finished."
        )
        finished.add(last[-1].finished_at or 0.0, env=environment)
        families.append(finished)
    return families


def snapshot_families(
    view: RepositoryView | None, environment: str, now: float, databases: Collection[str] = ()
) -> list[MetricFamily]:
    """Size and duration of the latest snapshot per kind, and the age of the last good / verified
    one among those holding every configured database (`databases`): a pre-restore snapshot of
    one database is no backup of the others."""
    readable = MetricFamily(
        "lockstep_repository_readable", "gauge", "1 when the agent's last read of the repository worked."
    )
    families = [readable]
    if view is None:
        return families
    readable.add(0 if view.error else 1, env=environment)
    if view.error:
        return families
    size = MetricFamily(
        "lockstep_snapshot_size_bytes", "gauge", "Bytes of dumps and files in the latest snapshot of a kind."
    )
    duration = MetricFamily(
        "lockstep_snapshot_duration_seconds", "gauge", "How long the latest snapshot of a kind took."
    )
    count = MetricFamily("lockstep_snapshots", "gauge", "Coordinated snapshots of this environment in the repository.")
    count.add(len(view.snapshots), env=environment)
    for kind in SNAPSHOT_KINDS:
        latest = _latest(snapshot for snapshot in view.snapshots if snapshot.kind == kind)
        if latest is None:
            continue
        size.add(latest.size, env=environment, kind=kind)
        if latest.seconds is not None:
            duration.add(latest.seconds, env=environment, kind=kind)
    families += [count, size, duration]
    # A schema-only snapshot backs up no data: it must not make the data's backups look recent.
    backups = [
        snapshot
        for snapshot in view.snapshots
        if not snapshot.schema_only and set(databases) <= set(snapshot.databases)
    ]
    good = _latest(snapshot for snapshot in backups if snapshot.good)
    verified = _latest(
        snapshot for snapshot in backups if snapshot.verification is not None and snapshot.verification.ok
    )
    for name, snapshot, text in (
        (
            "lockstep_last_good_snapshot_age_seconds",
            good,
            "Age of the newest snapshot of every database that did not fail verification.",
        ),
        (
            "lockstep_last_verified_snapshot_age_seconds",
            verified,
            "Age of the newest snapshot of every database that passed verification.",
        ),
    ):
        family = MetricFamily(name, "gauge", text)
        if snapshot is not None:
            family.add(max(0.0, round(now - snapshot.time, 3)), env=environment)
        families.append(family)
    return families


def schedule_families(
    records: list[OperationRecord], schedules: Iterable[tuple[str, str]], environment: str
) -> list[MetricFamily]:
    """The last finished run of each configured schedule (`schedules`: its job and history key):
    how long it took, whether it worked, when it ended, and for a backup the bytes it added.

    From the history, so the values survive an agent restart; a schedule removed from the config
    drops out, and one that has not finished a run yet has no samples (unknown, not zero)."""
    duration = MetricFamily(
        "lockstep_schedule_last_run_duration_seconds", "gauge", "How long the last finished run of a schedule took."
    )
    success = MetricFamily(
        "lockstep_schedule_last_run_success", "gauge", "1 when the last finished run of a schedule succeeded, else 0."
    )
    finished = MetricFamily(
        "lockstep_schedule_last_run_timestamp_seconds", "gauge", "When the last finished run of a schedule ended."
    )
    succeeded = MetricFamily(
        "lockstep_schedule_last_success_timestamp_seconds", "gauge", "When the last successful run of a schedule ended."
    )
    added = MetricFamily(
        "lockstep_schedule_last_run_added_bytes", "gauge", "Bytes the last successful scheduled backup added."
    )
    wanted = dict((key, job) for job, key in schedules)
    last: dict[str, OperationRecord] = {}
    last_success: dict[str, OperationRecord] = {}
    for record in records:
        if record.ref not in wanted or not record.operation.startswith("scheduled-"):
            continue
        if record.outcome not in ("succeeded", "failed") or record.finished_at is None:
            continue  # running, skipped (no work done) or interrupted (no duration to speak of)
        last[record.ref] = record
        if record.outcome == "succeeded":
            last_success[record.ref] = record
    for key, record in last.items():
        labels = {"env": environment, "job": wanted[key], "schedule": key}
        duration.add(round(record.duration or 0.0, 3), **labels)
        success.add(1 if record.outcome == "succeeded" else 0, **labels)
        finished.add(record.finished_at or 0.0, **labels)
    for key, record in last_success.items():
        labels = {"env": environment, "job": wanted[key], "schedule": key}
        succeeded.add(record.finished_at or 0.0, **labels)
        bytes_added = next((step.get("added_bytes") for step in record.steps if "added_bytes" in step), None)
        if isinstance(bytes_added, int):
            added.add(bytes_added, **labels)
    return [duration, success, finished, succeeded, added]


def _latest(snapshots: Iterable[SnapshotInfo]) -> SnapshotInfo | None:
    return max(snapshots, key=lambda snapshot: snapshot.time, default=None)


def health_families(results: list[HealthResult] | None, environment: str) -> list[MetricFamily]:
    state = MetricFamily("lockstep_health_check_up", "gauge", "1 when the component's health check passes, by slot.")
    latency = MetricFamily("lockstep_health_check_seconds", "gauge", "How long the last health check took.")
    for result in results or []:
        state.add(1 if result.ok else 0, env=environment, slot=result.slot, component=result.component)
        latency.add(round(result.seconds, 6), env=environment, slot=result.slot, component=result.component)
    return [state, latency]


def proxy_families(status: dict[str, object], environment: str) -> list[MetricFamily]:
    """Requests and errors through the proxy, by the slot that owns each upstream port."""
    slot_of_port: dict[int, str] = {}
    slots = status.get("slots")
    if isinstance(slots, dict):
        for slot, document in slots.items():
            for process in document.get("processes", []):
                if process.get("port") is not None:
                    slot_of_port[int(process["port"])] = str(slot)
    active = MetricFamily("lockstep_active_slot", "gauge", "1 for the slot that has the traffic.")
    for slot in ("blue", "green"):
        active.add(1 if status.get("active_slot") == slot else 0, env=environment, slot=slot)
    requests = MetricFamily("lockstep_proxy_requests_total", "counter", "Requests the proxy sent to a slot.")
    errors = MetricFamily("lockstep_proxy_errors_total", "counter", "Requests to a slot that failed or got a 5xx.")
    in_flight = MetricFamily("lockstep_proxy_in_flight_requests", "gauge", "Requests to a slot not answered yet.")
    traffic = status.get("traffic")
    upstreams = traffic.get("upstreams", []) if isinstance(traffic, dict) else []
    for upstream in upstreams:
        port = int(upstream["port"])
        labels = {"env": environment, "slot": slot_of_port.get(port, "unknown"), "port": str(port)}
        requests.add(float(upstream.get("requests") or 0), **labels)
        errors.add(float(upstream.get("errors") or 0), **labels)
        in_flight.add(float(upstream.get("in_flight") or 0), **labels)
    return [active, requests, errors, in_flight]


def collect(data: DashboardData) -> str:
    """The whole /metrics page; waits a little for a repository read that is due anyway."""
    environment = data.context.environment
    now = time.time()
    status = data.status()
    records = data.history()
    schedules = [(schedule.job, schedule_key(schedule)) for schedule in data.context.config.schedules]
    families = [
        *operation_families(records, environment),
        *schedule_families(records, schedules, environment),
        *snapshot_families(data.repository(wait=2.0), environment, now, list(data.context.config.databases)),
        *health_families(data.health(wait=2.0), environment),
        *proxy_families(status, environment),
    ]
    agent = status.get("agent")
    if isinstance(agent, dict):
        started = MetricFamily("lockstep_agent_start_time_seconds", "gauge", "When the agent started.")
        started.add(float(agent.get("started_at") or 0.0), env=environment)
        families.append(started)
    return render(families)
