#!/usr/bin/env python3
"""Benchmark: `lockstep repo backup --stdin` against restic and zstd on the shop database dump.

Runs each competitor on the same file, on the same disk, in the same run, and reports ratios
(issue #2's targets). Usage, from the repository root:

    python bench/backup_stream.py                 # scale 8 (~725 MB dump), 3 rounds
    python bench/backup_stream.py --scale 1 --rounds 1   # quick look

It builds the `shop<scale>` PostgreSQL database from ../shared/bench/shop-db.sql if missing,
dumps it once, and makes a second dump after a realistic change: 1 % of the rows of orders,
customers and products updated at random, and 1 % more rows appended to the events log.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench" / "shop-db.sql"
PG = ["-h", "127.0.0.1", "-U", "postgres"]
PASSWORD = "benchmark password"
LAST_CPU_SECONDS = 0.0


def run_measured(
    argv: list[str], stdin_path: Path | None = None, stdout_path: Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in KiB of the largest process). Its CPU
    seconds (user + system) go to LAST_CPU_SECONDS: steadier than wall time on a shared machine."""
    global LAST_CPU_SECONDS
    with contextlib.ExitStack() as files:
        stdin = files.enter_context(open(stdin_path, "rb")) if stdin_path else subprocess.DEVNULL
        stdout = files.enter_context(open(stdout_path, "wb")) if stdout_path else subprocess.DEVNULL
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
        )
        # wait4 gives this child's own peak RSS, which the shell's `time` would mix up with others'.
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {stderr[-2000:]}")
    LAST_CPU_SECONDS = usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def ensure_dumps(scale: int, data_dir: Path) -> tuple[Path, Path]:
    """The plain dump of shop<scale> and of its changed copy, built once and kept."""
    data_dir.mkdir(parents=True, exist_ok=True)
    base, changed = data_dir / f"shop{scale}.sql", data_dir / f"shop{scale}-changed.sql"
    database = f"shop{scale}"
    exists = subprocess.run(
        ["psql", *PG, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not exists:
        print(f"building database {database} (scale {scale}) ...", file=sys.stderr)
        subprocess.run(["createdb", *PG, database], check=True)
        subprocess.run(["psql", *PG, "-q", "-v", f"scale={scale}", "-f", str(SHARED), database], check=True)
    if not base.exists():
        with open(base, "wb") as out:
            subprocess.run(["pg_dump", *PG, database], stdout=out, check=True)
    if not changed.exists():
        copy = f"{database}_changed"
        subprocess.run(["dropdb", *PG, "--if-exists", copy], check=True)
        subprocess.run(["createdb", *PG, "-T", database, copy], check=True)
        subprocess.run(
            [
                "psql",
                *PG,
                "-q",
                copy,
                "-c",
                "SELECT setseed(0.7);"
                " UPDATE orders SET status = 'refunded' WHERE random() < 0.01;"
                " UPDATE customers SET name = name || ' jr' WHERE random() < 0.01;"
                " UPDATE products SET price = price + 1 WHERE random() < 0.01;"
                " INSERT INTO events SELECT id + 1000000000, customer_id, kind, at + interval '1 day', payload"
                " FROM events WHERE random() < 0.01;",
            ],
            check=True,
        )
        with open(changed, "wb") as out:
            subprocess.run(["pg_dump", *PG, copy], stdout=out, check=True)
        subprocess.run(["dropdb", *PG, copy], check=True)
    return base, changed


def hashing_mode() -> str:
    """How lockstep hashes chunks here (vector lanes need the extension `pip install -e .` builds)."""
    describe = "from lockstep.repository.chunk_hashing import describe; print(describe())"
    return subprocess.run([sys.executable, "-c", describe], capture_output=True, text=True, check=True).stdout.strip()


def one_round(base: Path, changed: Path, work: Path) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lockstep_repo, restic_repo = work / "lockstep-repo", work / "restic-repo"
    env = {"LOCKSTEP_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    lockstep = [sys.executable, "-m", "lockstep", "repo"]
    run_measured([*lockstep, "init", "-r", str(lockstep_repo)], env=env)
    run_measured(["restic", "init", "-r", str(restic_repo)], env=env)
    result: dict[str, float] = {}

    result["zstd_s"], _ = run_measured(["zstd", "-3", "-T2", "-q", "-f", str(base), "-o", str(work / "dump.zst")])
    result["zstd_cpu_s"] = LAST_CPU_SECONDS
    result["zstd_bytes"] = (work / "dump.zst").stat().st_size
    (work / "dump.zst").unlink()

    result["restic_s"], result["restic_rss_kib"] = run_measured(
        ["restic", "-r", str(restic_repo), "backup", "-q", "--stdin", "--stdin-filename", "shop.sql"], base, env=env
    )
    result["restic_cpu_s"] = LAST_CPU_SECONDS
    result["restic_bytes"] = directory_bytes(restic_repo)
    result["lockstep_s"], result["lockstep_rss_kib"] = run_measured(
        [*lockstep, "backup", "-r", str(lockstep_repo), "--stdin", "--stdin-filename", "shop.sql"], base, env=env
    )
    result["lockstep_cpu_s"] = LAST_CPU_SECONDS
    result["lockstep_bytes"] = directory_bytes(lockstep_repo)

    result["restic_second_s"], _ = run_measured(
        ["restic", "-r", str(restic_repo), "backup", "-q", "--stdin", "--stdin-filename", "shop.sql"], changed, env=env
    )
    result["restic_second_added"] = directory_bytes(restic_repo) - result["restic_bytes"]
    result["lockstep_second_s"], _ = run_measured(
        [*lockstep, "backup", "-r", str(lockstep_repo), "--stdin", "--stdin-filename", "shop.sql"], changed, env=env
    )
    result["lockstep_second_added"] = directory_bytes(lockstep_repo) - result["lockstep_bytes"]

    snapshots = json.loads(
        subprocess.run(
            [*lockstep, "snapshots", "-r", str(lockstep_repo), "--json"],
            env={**os.environ, **env},
            capture_output=True,
            check=True,
        ).stdout
    )
    first = snapshots[0]["id"]
    restic_snapshots = json.loads(
        subprocess.run(
            ["restic", "-r", str(restic_repo), "snapshots", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            check=True,
        ).stdout
    )
    restic_first = restic_snapshots[0]["id"]
    out = work / "dumped.sql"
    result["restic_dump_s"], _ = run_measured(
        ["restic", "-r", str(restic_repo), "dump", restic_first, "/shop.sql"], stdout_path=out, env=env
    )
    result["lockstep_dump_s"], _ = run_measured(
        [*lockstep, "dump", "-r", str(lockstep_repo), first, "/shop.sql"], stdout_path=out, env=env
    )
    if out.stat().st_size != base.stat().st_size:
        raise SystemExit("lockstep dump produced the wrong number of bytes")
    out.unlink()
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "results" / "data")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "bench" / "results" / "work")
    arguments = parser.parse_args()
    # lockstep's bytecode, as an installed wheel has it: an editable install has none, and under
    # PYTHONDONTWRITEBYTECODE every measured command would compile ~60 modules first (~70 ms).
    compileall.compile_dir(str(ROOT / "src" / "lockstep"), quiet=1)
    print("blob IDs: " + hashing_mode(), file=sys.stderr)
    base, changed = ensure_dumps(arguments.scale, arguments.data_dir)
    rounds = [one_round(base, changed, arguments.work_dir) for _ in range(arguments.rounds)]
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    ratios = {
        "backup wall time, lockstep / restic (target <= 0.4)": median["lockstep_s"] / median["restic_s"],
        "backup wall time, lockstep / zstd -3 -T2 (target <= 1.0)": median["lockstep_s"] / median["zstd_s"],
        "stored bytes, lockstep / restic (target <= 1.05)": median["lockstep_bytes"] / median["restic_bytes"],
        "second backup added, lockstep / restic (target <= 1.0)": median["lockstep_second_added"]
        / median["restic_second_added"],
        "dump wall time, lockstep / restic (target <= 1.0)": median["lockstep_dump_s"] / median["restic_dump_s"],
        "backup CPU seconds, lockstep / restic (no target; steadier on a busy machine)": median["lockstep_cpu_s"]
        / median["restic_cpu_s"],
        "backup CPU seconds, lockstep / zstd -3 -T2 (no target)": median["lockstep_cpu_s"] / median["zstd_cpu_s"],
    }
    sizes = f"dump: {base.stat().st_size / 1e6:.0f} MB, changed: {changed.stat().st_size / 1e6:.0f} MB"
    print(f"{sizes}, rounds: {arguments.rounds}")
    for key, value in median.items():
        print(f"  {key:24} {value:,.2f}")
    for label, ratio in ratios.items():
        print(f"{ratio:6.3f}  {label}")
    print(f"lockstep peak RSS: {median['lockstep_rss_kib'] / 1024:.0f} MiB (target < 300)")
    results = arguments.data_dir.parent / "backup_stream.json"
    results.write_text(json.dumps({"median": median, "ratios": ratios, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
