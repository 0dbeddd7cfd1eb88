"""`lockstep status` and `lockstep history`."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from lockstep.cli.output import console, print_json, print_table
from lockstep.cli.project_options import project_options, wants_json
from lockstep.cli.reporting import ConsoleReporter
from lockstep.wording import counted

# The actions (the config models, the agent's client, the repository) are imported inside the
# commands that run them: `lockstep --help` lists `status` and `history` without loading them.


def print_line(text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@click.command("status")
@project_options
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
@click.option("--local", is_flag=True, help="This machine only, even when the environment lists hosts.")
def status_command(config_path: Path | None, environment: str | None, json_output: bool, local: bool) -> None:
    """Where the app is served, the active slot and release, health, the lock and the last operation.

    An interrupted deploy (its process killed) is reported and cleaned up. When the environment
    lists `hosts`, asks each of them over SSH and prints a line per host.
    """
    from lockstep.actions.status import age, environment_status

    reporter = ConsoleReporter(json_lines=False)
    document = environment_status(Path.cwd(), config_path, environment, reporter, local=local)
    if wants_json(json_output):
        print_json(document)
        return
    if "hosts" in document:
        _print_hosts(document)
        return
    print_line(describe_environment(document))
    agent = document["agent"]
    if not agent["running"]:
        print_line(f"  agent: not running ({agent['detail']})")
    else:
        active = document.get("active_slot")
        slots = document.get("slots", {})
        if not active:
            print_line("  nothing deployed yet")
        for slot, info in slots.items():
            if not info["release"]:
                continue
            role = "active" if slot == active else "warm (instant rollback)"
            health = ", ".join(f"{name} {state}" for name, state in info["health"].items()) or "no checks"
            running = ", ".join(
                f"{process['component']} pid {process['pid']}"
                + _other_release(process, info["release"])
                + (
                    ""
                    if process["running"]
                    else " (crash loop: not restarted)"
                    if process.get("crash_looped")
                    else " (down)"
                )
                for process in info["processes"]
            )
            print_line(
                f"  slot {slot} [{role}]: release {info['release']}, commit {(info['version'] or '')[:12]}, "
                f"since {age(info['since'])}; {health}; {running}"
            )
            paused = document.get("paused_workers") or []
            if info.get("stopped"):
                print_line(describe_stopped(slot, info["stopped"], paused))
            elif slot == active and (mark := _restart_failed_in(slot, paused)) is not None:
                # Started, but not staying up: the agent restarts them, and the retry goes on.
                print_line(describe_stopped(slot, list(mark["components"]), paused, "NOT STAYING UP"))
        active_processes = slots[active]["processes"] if active and active in slots else []
        # The release as deployed tells; before any, the config does.
        workers_only = (
            all(process.get("port") is None for process in active_processes)
            if active_processes
            else bool(document.get("workers_only"))
        )
        print_line(describe_traffic(document.get("traffic", {}), active, workers_only))
    lock = document["lock"]
    print_line(f"  lock: {lock['state']}" + (f" — {lock['detail']}" if lock.get("detail") else ""))
    last = document.get("last_operation")
    if last:
        print_line(
            f"  last: {last['operation']} {last['id']} {last['outcome']}"
            + (f" at {last['failed_step']}" if last.get("failed_step") else "")
            + (f" ({last['reason']})" if last.get("reason") and last["outcome"] != "succeeded" else "")
        )


def _print_hosts(document: dict[str, Any]) -> None:
    """One line per host of a multi-host environment: what it serves, or why it did not answer."""
    print_line(f"environment {document['environment']}: {counted(len(document['hosts']), 'host')}")
    for host in document["hosts"]:
        if host.get("error"):
            print_line(f"  {host['name']}: {host['error']}")
        elif not host.get("agent", {}).get("running"):
            print_line(f"  {host['name']}: agent not running ({host['agent'].get('detail')})")
        elif not host.get("active_slot"):
            print_line(f"  {host['name']}: nothing deployed yet")
        else:
            slot = host["slots"][host["active_slot"]]
            health = ", ".join(f"{name} {state}" for name, state in slot["health"].items()) or "no checks"
            print_line(
                f"  {host['name']}: slot {host['active_slot']}, release {host['release']}, "
                f"commit {(host['commit'] or '')[:12]}; {health}"
            )
    lock = document["lock"]
    print_line(f"  lock: {lock['state']}" + (f" — {lock['detail']}" if lock.get("detail") else ""))
    last = document.get("last_operation")
    if last:
        print_line(
            f"  last: {last['operation']} {last['id']} {last['outcome']}"
            + (f" ({last['reason']})" if last.get("reason") and last["outcome"] != "succeeded" else "")
        )


@click.command("history")
@project_options
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
def history_command(config_path: Path | None, environment: str | None, json_output: bool) -> None:
    """Every deploy, rollback and scheduled job: outcome, duration, performer, snapshot, what failed."""
    from lockstep.actions.status import operation_history

    records = operation_history(Path.cwd(), config_path, environment)
    if wants_json(json_output):
        print_json([record.to_document() for record in records])
        return
    table = Table()
    for title in ("ID", "Operation", "Outcome", "Started", "Duration", "Commit", "By", "Snapshot", "Failed at"):
        table.add_column(title, no_wrap=title != "Failed at")
    rows = [
        [
            record.id,
            record.operation,
            record.outcome + (" +data" if record.data_restored else ""),
            _time(record.started_at),
            f"{record.duration:.1f} s" if record.duration is not None else "",
            (record.commit or "")[:12],
            record.performer,
            (record.snapshot_id or "")[:8],
            (record.failed_step or "") + (f": {record.reason}" if record.reason else ""),
        ]
        for record in records
    ]
    for row in rows:
        table.add_row(*row)
    print_table(table, rows, lead=(0, 1, 2, 3, 4))  # ID, operation, outcome, started, duration


COMMANDS = [status_command, history_command]


def _other_release(process: dict[str, Any], slot_release: str | None) -> str:
    """A component rolled back alone (`rollback --component`) runs another release than its slot's."""
    release = process.get("release")
    return f" on release {release}" if release and release != slot_release else ""


def _restart_failed_in(slot: str, paused: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The mark of workers of `slot` whose restart failed, and are not kept stopped on purpose."""
    failed = [item for item in paused if item.get("slot") == slot and item.get("restart_failed")]
    return next((item for item in failed if not item.get("kept_stopped")), None)


def describe_stopped(
    slot: str, components: list[str], paused: list[dict[str, Any]] | None = None, state: str = "STOPPED"
) -> str:
    """Components of the active release the agent does not run: stopped (a data restore stops the
    workers, and a killed deploy or rollback may not have started them again), not healthy; or
    (`state`) started again but not staying up. When an operation's record says it stopped them
    (`paused`), why they are still stopped, and whether and when the agent tries again
    (pipeline/paused_workers_retry.py)."""
    line = f"  {state} in slot {slot}: {', '.join(components)} — its release runs without them; "
    mark = next((item for item in paused or [] if item.get("slot") == slot), None)
    if mark is None or mark.get("kept_stopped"):
        return line + "the last operation below says why; `lockstep deploy` starts a release with all its components"
    stopped_by = f"{mark['operation']} {mark['id']} stopped them for a data restore"
    if mark.get("waiting_for"):
        return (
            line + f"{stopped_by}; they stay stopped while the coordinated deploy goes on ({mark['waiting_for']}): "
            "another host may be restoring the data; the agent starts them once it ends"
        )
    if not mark.get("restart_failed"):
        return line + f"{stopped_by}; the agent starts them again"
    retry_at = mark.get("retry_at")
    when = "within seconds" if not retry_at else f"in {max(0.0, float(retry_at) - time.time()):.0f} s"
    if mark.get("settle_until"):
        when = f"now: it started them, and counts them as running once they stayed up {mark['settle_seconds']}"
    tries = f", {counted(int(mark['attempts']), 'retry', 'retries')} failed" if mark.get("attempts") else ""
    return (
        line + f"{stopped_by} and starting them again failed ({mark['restart_failed']}{tries}); the agent tries "
        f"again {when} (after a failed try it waits {mark['retry_every']}); `lockstep deploy` starts a release with "
        "all its components"
    )


def describe_environment(document: dict[str, Any]) -> str:
    """The first line: the environment and where it answers; an app of workers only answers
    nowhere, and printing the proxy's address sent people to a URL nothing listens on."""
    where = document.get("url") or "workers only, no URL (no component has a port)"
    if not document.get("url") and document.get("app_configured") is False:
        # "workers only" of a config with no app at all sent a newcomer looking for workers.
        where = "no app to deploy ([app.components] is empty): snapshots and backups only"
    return f"environment {document['environment']}: {where}"


def describe_hold(hold: dict[str, Any] | None) -> str:
    """A held site says so: requests wait (or get 503) until the data rollback releases them."""
    if not hold:
        return ""
    owner = (hold.get("owner") or {}).get("pid")
    text = f" — HELD for a data rollback (pid {owner})"
    if "seconds" in hold:
        text += f" for {float(hold['seconds']):.0f} s, {hold.get('waiting', 0)} requests waiting"
    if hold.get("expired"):
        text += "; past its deadline: requests get 503"
    if hold.get("resumed"):
        text += "; resumed by the restarted proxy"
    return text


def describe_traffic(traffic: dict[str, Any], active_slot: str | None, workers_only: bool = False) -> str:
    """The traffic line: where requests go, or why none can yet (never "port None").

    Before the first switch the proxy is not started and has no upstream: that is the normal
    state of a fresh environment, not an outage, so it is not reported as one. Nor is it when
    the active slot runs workers only (`workers_only`): there is no traffic to serve. Nor does
    the first deploy of an app of workers only start it: it has no traffic to send.
    """
    text = f"  traffic: {traffic.get('kind')} on {traffic.get('listen')}"
    port = traffic.get("active_port")
    running = traffic.get("running", True)
    if port is not None:
        text += f", port {port}"
    if active_slot and workers_only and port is None:
        text += " — not used: the active slot runs workers only (no component has a port)"
    elif not active_slot and workers_only and not running:
        text += " — not used: no component has a port (workers only), so no deploy starts it"
    elif not active_slot:
        text += " — not started: the first deploy starts it" if not running else ", no upstream yet"
    elif not running:
        text += " — NOT RUNNING: requests are refused"
    elif port is None:
        text += ", no upstream: the active slot runs no component with a port"
    return text + describe_hold(traffic.get("hold"))
