#!/usr/bin/env python3
"""Deploy and rollback of the notes example under continuous load, against the seed's way.

The seed systems deployed by stopping the app and starting the new version on the same port.
This runs that (a "restart deploy") and lockstep's blue-green deploy on the same app, same
machine, same load, and reports failed requests for each, plus lockstep's timings:

- rollback to a warm slot: from starting `lockstep rollback` to the first response of the old
  release (target: under 1 s);
- the switch inside a deploy, and the whole deploy.

    python bench/deploy_and_rollback.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.deploy.conftest import NotesLoad, _stop_everything, free_ports, make_project  # noqa: E402


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} never opened")


def restart_deploy_round(work: Path) -> tuple[int, int]:
    """The seed's way: one port, stop v1, start v2. Returns (requests, failures) under load."""
    project = make_project(work)
    (port,) = free_ports(1)
    environment = {**os.environ, "PORT": str(port), "NOTES_DATABASE": str(work / "notes.db")}
    subprocess.run([sys.executable, "migrate.py"], cwd=project.directory, env=environment, check=True)

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=project.directory,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)
        return process

    app = start()
    with NotesLoad(port) as load:
        time.sleep(1.0)
        app.send_signal(signal.SIGTERM)
        app.wait()
        app = start()
        time.sleep(1.0)
    app.send_signal(signal.SIGTERM)
    app.wait()
    return load.report.requests, len(load.report.failures)


def lockstep_round(work: Path) -> dict[str, float]:
    """Blue-green with lockstep: deploy v1, deploy v1.1 under load, roll back under load."""
    project = make_project(work, watch_seconds=1.0)
    project.start_agent()
    try:
        assert project.lockstep("deploy").returncode == 0
        (project.directory / "VERSION").write_text("1.1.0\n")
        project.commit("notes 1.1.0")
        with NotesLoad(project.listen_port) as load:
            time.sleep(0.5)
            started = time.monotonic()
            deployed = project.lockstep("deploy", "--json")
            deploy_seconds = time.monotonic() - started
            time.sleep(0.5)
            started = time.monotonic()
            rolled_back = project.lockstep("rollback")
            rollback_seconds = time.monotonic() - started
            back = load.report.first_seen_after(started, "1.0.0")
            time.sleep(0.5)
        assert deployed.returncode == 0, deployed.err
        assert rolled_back.returncode == 0, rolled_back.err
        import json

        steps = {step["step"]: step["seconds"] for step in json.loads(deployed.out)["steps"]}
        return {
            "requests": load.report.requests,
            "failures": len(load.report.failures),
            "deploy_seconds": deploy_seconds,
            "switch_seconds": steps["switch"],
            "rollback_seconds": rollback_seconds,
            "rollback_to_traffic_seconds": (back - started) if back is not None else float("nan"),
        }
    finally:
        _stop_everything(project)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    os.environ.setdefault("LOCKSTEP_PASSWORD", "bench")
    naive: list[tuple[int, int]] = []
    ours: list[dict[str, float]] = []
    for number in range(arguments.rounds):
        with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as directory:
            naive.append(restart_deploy_round(Path(directory) / "restart"))
            ours.append(lockstep_round(Path(directory) / "lockstep"))
        print(f"round {number + 1}: restart deploy {naive[-1]}, lockstep {ours[-1]}", file=sys.stderr)

    def median(key: str) -> float:
        return statistics.median(item[key] for item in ours)

    naive_failures = sum(failures for _, failures in naive)
    naive_requests = sum(requests for requests, _ in naive)
    our_failures = sum(int(item["failures"]) for item in ours)
    our_requests = sum(int(item["requests"]) for item in ours)
    print(f"| measure ({arguments.rounds} rounds, medians) | restart deploy (seed) | lockstep |")
    print("|---|---|---|")
    print(
        f"| failed requests during deploy (+ rollback) | {naive_failures} of {naive_requests} | "
        f"{our_failures} of {our_requests} |"
    )
    print(f"| whole deploy, s (watch window 1 s) | | {median('deploy_seconds'):.2f} |")
    print(f"| switch inside the deploy, ms | | {median('switch_seconds') * 1000:.0f} |")
    print(
        f"| rollback to a warm slot: command start to old release serving, s (target < 1) | | "
        f"{median('rollback_to_traffic_seconds'):.2f} |"
    )
    print(f"| whole rollback command, s | | {median('rollback_seconds'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
