"""/metrics: the Prometheus text format, parsed by a small parser here, against a real agent."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lockstep.agent.dashboard.collector import RepositoryView, SnapshotInfo
from lockstep.agent.dashboard.metrics import MetricFamily, render, snapshot_families
from tests.conftest import TEST_PASSWORD
from tests.deploy.conftest import NotesProject, _stop_everything, free_ports, make_project

TOKEN = "metrics-test-token-5f1c2a9e"

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"(?:,|$)')


@dataclass
class Exposition:
    """What a scrape returned: families by name, each with its type, help and samples."""

    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def values(self, name: str, **labels: str) -> list[float]:
        return [
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(key) == item for key, item in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.values(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found}"
        return found[0]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda match: "\n" if match.group(1) == "n" else match.group(1), value)


def parse_exposition(text: str) -> Exposition:
    """A strict reader of the text format 0.0.4: every sample belongs to a family declared before it."""
    parsed = Exposition()
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in parsed.helps, f"HELP for {name} twice"
            parsed.helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in parsed.types, f"TYPE for {name} twice"
            parsed.types[name] = kind
            continue
        assert not line.startswith("#"), f"unexpected comment: {line}"
        match = _SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        labels: dict[str, str] = {}
        if match.group("labels"):
            position = 0
            text_labels = match.group("labels")
            while position < len(text_labels):
                label = _LABEL.match(text_labels, position)
                assert label is not None, f"bad labels in {line!r}"
                labels[label.group("key")] = _unescape(label.group("value"))
                position = label.end()
        name = match.group("name")
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in parsed.types else name
        assert family in parsed.types, f"{name} has no TYPE line before it"
        assert family in parsed.helps, f"{name} has no HELP line"
        raw = match.group("value")
        value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(raw)
        parsed.samples.append((name, labels, float(raw) if value is None else value))
    return parsed


def scrape(port: int, token: str | None = TOKEN) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def test_rendered_families_parse_with_escaped_labels() -> None:
    """Label values with quotes, backslashes and newlines are escaped; HELP/TYPE come first."""
    family = MetricFamily("lockstep_example_total", "counter", "An example.")
    family.add(3, env='we"ird\\name\nx')
    histogram = MetricFamily("lockstep_example_seconds", "histogram", "A histogram.")
    histogram.add(1, "_bucket", le="1")
    histogram.add(2, "_bucket", le="+Inf")
    histogram.add(2.5, "_sum")
    histogram.add(2, "_count")
    parsed = parse_exposition(render([family, histogram]))
    assert parsed.value("lockstep_example_total", env='we"ird\\name\nx') == 3
    assert parsed.types == {"lockstep_example_total": "counter", "lockstep_example_seconds": "histogram"}
    assert parsed.value("lockstep_example_seconds_bucket", le="+Inf") == 2
    assert parsed.value("lockstep_example_seconds_sum") == 2.5


@pytest.fixture
def metrics_project(tmp_path: Path) -> Iterator[tuple[NotesProject, int]]:
    """The notes app with the dashboard on a free port and its token set."""
    (port,) = free_ports(1)
    project = make_project(tmp_path, extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\n')
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.start_agent()
    try:
        yield project, port
    finally:
        _stop_everything(project)


def _wait_for_snapshots(port: int, count: int, timeout: float = 60.0) -> Exposition:
    """Scrape until the agent has read `count` snapshots (the repository is read in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, text = scrape(port)
        assert status == 200, text
        parsed = parse_exposition(text)
        if parsed.values("lockstep_snapshots") == [count] or time.monotonic() > deadline:
            return parsed
        time.sleep(0.5)


def test_metrics_after_real_deploys(metrics_project: tuple[NotesProject, int]) -> None:
    """Deploy counts, durations, snapshot size and age, health per slot and proxy requests per slot."""
    project, port = metrics_project
    status, _, body = scrape(port, token=None)
    assert status == 401 and "Bearer" in body
    assert scrape(port, token="wrong-token")[0] == 401

    assert project.lockstep("deploy").returncode == 0
    project.add_note("before v2")
    project.apply("v2", "notes 2.0.0")
    deployed = project.lockstep("deploy")
    assert deployed.returncode == 0, deployed.err
    for _ in range(5):
        project.version()

    parsed = _wait_for_snapshots(port, 2)
    status, content_type, text = scrape(port)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert TOKEN not in text and TEST_PASSWORD not in text
    for name in parsed.types:
        assert name.startswith("lockstep_"), name
    assert parsed.value("lockstep_deploys_total", outcome="succeeded") == 2
    assert parsed.value("lockstep_deploys_total", outcome="failed") == 0
    assert parsed.value("lockstep_rollbacks_total", outcome="succeeded") == 0
    assert parsed.types["lockstep_deploy_duration_seconds"] == "histogram"
    assert parsed.value("lockstep_deploy_duration_seconds_count") == 2
    assert parsed.value("lockstep_deploy_duration_seconds_bucket", le="+Inf") == 2
    assert 0 < parsed.value("lockstep_deploy_duration_seconds_sum") < 600
    assert parsed.value("lockstep_repository_readable") == 1
    assert parsed.value("lockstep_snapshots") == 2
    # The second deploy's pre-deploy snapshot holds the notes database.
    assert parsed.value("lockstep_snapshot_size_bytes", kind="pre-deploy") > 0
    assert parsed.value("lockstep_snapshot_duration_seconds", kind="pre-deploy") > 0
    assert 0 <= parsed.value("lockstep_last_good_snapshot_age_seconds") < 600
    assert parsed.values("lockstep_last_verified_snapshot_age_seconds")  # deploys verify their snapshot
    active = project.status()["active_slot"]
    assert parsed.value("lockstep_active_slot", slot=active) == 1
    assert parsed.value("lockstep_health_check_up", slot=active, component="web") == 1
    assert parsed.value("lockstep_health_check_seconds", slot=active, component="web") >= 0
    assert parsed.value("lockstep_proxy_requests_total", slot=active) >= 5
    assert parsed.value("lockstep_proxy_errors_total", slot=active) == 0


def test_a_scheduled_backup_shows_in_the_metrics(metrics_project: tuple[NotesProject, int]) -> None:
    """`lockstep backup` without --env tags its snapshot `default`; for an environment without its
    own [environments] table that is this environment's backup (the agent's schedules take the
    same), but the metrics only counted pre-deploy snapshots: no kind="scheduled" size, and a
    snapshot age that grew until the next deploy whatever the nightly backups did."""
    project, port = metrics_project
    assert project.lockstep("deploy").returncode == 0
    backup = project.lockstep("backup")
    assert backup.returncode == 0, backup.err
    parsed = _wait_for_snapshots(port, 2)
    assert parsed.value("lockstep_snapshots") == 2
    assert parsed.value("lockstep_snapshot_size_bytes", kind="scheduled") > 0


def test_the_last_scheduled_runs_duration_and_bytes_added_are_in_the_metrics(tmp_path: Path) -> None:
    """The agent's scheduled backups and verifications were in the metrics only through the
    snapshot they made (lockstep_snapshot_duration_seconds times the snapshot step alone): how long
    the whole run took (preflight, dump, retention, verification), whether it worked and what it
    added were not, so a nightly backup creeping towards its window went unnoticed."""
    (port,) = free_ports(1)
    schedules = (
        '[[schedules]]\njob = "backup"\ncron = "0 3 * * *"\n\n[[schedules]]\njob = "verify"\ncron = "0 4 * * *"\n'
    )
    project = make_project(tmp_path, extra_config=f'{schedules}\n[agent]\ndashboard_listen = "127.0.0.1:{port}"\n')
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.database.parent.mkdir(parents=True)  # as a first deploy leaves it: a backup needs the database
    with contextlib.closing(sqlite3.connect(project.database)) as connection, connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    project.start_agent()
    try:
        deadline = time.monotonic() + 90
        while True:
            status, _, text = scrape(port)
            assert status == 200, text
            parsed = parse_exposition(text)
            done = parsed.values("lockstep_schedule_last_run_success")
            if len(done) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        backup = {"job": "backup", "schedule": "backup 0 3 * * *"}
        records = [record for record in project.history() if record["operation"] == "scheduled-backup"]
        assert [record["outcome"] for record in records] == ["succeeded"], records
        assert parsed.types["lockstep_schedule_last_run_duration_seconds"] == "gauge"
        assert parsed.value("lockstep_schedule_last_run_duration_seconds", **backup) == pytest.approx(
            records[0]["duration"], abs=0.002
        )
        assert parsed.value("lockstep_schedule_last_run_success", **backup) == 1
        assert parsed.value("lockstep_schedule_last_run_timestamp_seconds", **backup) == pytest.approx(
            records[0]["finished_at"], abs=0.01
        )
        assert parsed.value("lockstep_schedule_last_success_timestamp_seconds", **backup) == pytest.approx(
            records[0]["finished_at"], abs=0.01
        )
        assert parsed.value("lockstep_schedule_last_run_added_bytes", **backup) > 0
        # The verification ran too (after the backup or before it: it may have found no snapshot).
        verify = {"job": "verify", "schedule": "verify 0 4 * * * (restore)"}
        assert parsed.value("lockstep_schedule_last_run_duration_seconds", **verify) >= 0
        assert parsed.values("lockstep_schedule_last_run_success", **verify) in ([0], [1])
        assert not parsed.values("lockstep_schedule_last_run_added_bytes", **verify)
    finally:
        _stop_everything(project)


def test_metrics_without_token_and_without_the_repository_password(tmp_path: Path) -> None:
    """metrics_without_token opens /metrics only; an agent without the repository password still serves,
    reporting the repository as unreadable and why, rather than failing the scrape."""
    (port,) = free_ports(1)
    project = make_project(
        tmp_path, extra_config=f'[agent]\ndashboard_listen = "127.0.0.1:{port}"\nmetrics_without_token = true\n'
    )
    project.env["LOCKSTEP_DASHBOARD_TOKEN"] = TOKEN
    project.env["LOCKSTEP_PASSWORD"] = ""  # the agent cannot open the repository
    project.start_agent()
    try:
        deadline = time.monotonic() + 30
        while True:
            status, _, text = scrape(port, token=None)
            assert status == 200, text
            parsed = parse_exposition(text)
            if parsed.values("lockstep_repository_readable") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert parsed.value("lockstep_repository_readable") == 0
        assert parsed.value("lockstep_deploys_total", outcome="succeeded") == 0
        assert not parsed.values("lockstep_last_good_snapshot_age_seconds")  # unknown is absent, not zero
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/environment")
        assert connection.getresponse().status == 401
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/environment", headers={"Authorization": f"Bearer {TOKEN}"})
        document = json.loads(connection.getresponse().read())
        connection.close()
        assert document["repository"]["state"] == "unreadable"
        assert "LOCKSTEP_PASSWORD" in document["repository"]["detail"]
    finally:
        _stop_everything(project)


def test_a_pre_restore_snapshot_of_one_database_does_not_reset_the_last_good_age() -> None:
    """The age of the last good snapshot counts only snapshots holding every configured
    database: a pre-restore snapshot of one of two made it look a minute old."""
    now = time.time()

    def taken(minutes_ago: float, kind: str, databases: list[str]) -> SnapshotInfo:
        return SnapshotInfo(
            id=f"{kind}-{minutes_ago}",
            time=now - minutes_ago * 60,
            kind=kind,
            message=None,
            size=1,
            commit=None,
            databases=databases,
            verification=None,
            seconds=None,
        )

    view = RepositoryView(snapshots=[taken(180, "scheduled", ["audit", "main"]), taken(1, "pre-restore", ["main"])])
    text = render(snapshot_families(view, "production", now, ["main", "audit"]))
    assert parse_exposition(text).value("lockstep_last_good_snapshot_age_seconds") == 180 * 60
