#!/usr/bin/env python3
"""Benchmark: `lockstep snapshot create` and `snapshot restore` against pg_dump | gzip, restic and psql.

Issue #3's targets, measured on the shop database, every competitor in the same run:

- `snapshot create` <= 0.25x `pg_dump | gzip` (the seed documents' way) and <= 0.6x
  `pg_dump | restic backup --stdin`;
- restoring into an empty database <= 0.75x `gunzip -c | psql`;
- a second snapshot after 1 % of the rows changed stores < 0.5x what the first stored.

Usage, from the repository root (builds `shop<scale>` from ../shared/bench/shop-db.sql if missing):

    python bench/snapshot_vs_pg_dump.py                     # scale 8 (~1 GB), 3 rounds
    python bench/snapshot_vs_pg_dump.py --scale 1 --rounds 1  # quick look

Each round uses a fresh project directory (a lockstep.toml naming the database as `main`), a
fresh lockstep repository and a fresh restic repository; the real CLI runs in a child process
and the competitors run as shell pipelines with `pipefail`. The change for the second snapshot
is made to a copy of the database (`shop<scale>_changed`), so the source stays as built.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench" / "shop-db.sql"
PG = ["-h", "127.0.0.1", "-U", "postgres"]
SERVER = "postgresql://postgres@127.0.0.1:5432"
PASSWORD = "benchmark password"
# 1 % of the rows of the mutable tables updated at random, 1 % more rows appended to the log;
# the same change as bench/backup_stream.py.
CHANGE = (
    "SELECT setseed(0.7);"
    " UPDATE orders SET status = 'refunded' WHERE random() < 0.01;"
    " UPDATE customers SET name = name || ' jr' WHERE random() < 0.01;"
    " UPDATE products SET price = price + 1 WHERE random() < 0.01;"
    " INSERT INTO events SELECT id + 1000000000, customer_id, kind, at + interval '1 day', payload"
    " FROM events WHERE random() < 0.01;"
)


def hashing_mode() -> str:
    """How lockstep hashes chunks here (vector lanes need the extension `pip install -e .` builds)."""
    describe = "from lockstep.repository.chunk_hashing import describe; print(describe())"
    return subprocess.run(
        [sys.executable, "-c", describe], env=environment(), capture_output=True, text=True, check=True
    ).stdout.strip()


def environment() -> dict[str, str]:
    return {**os.environ, "LOCKSTEP_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT / "src")}


def timed(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one command; a failure stops the benchmark with the command's error."""
    started = time.perf_counter()
    completed = subprocess.run(argv, cwd=cwd, env=env or environment(), capture_output=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(argv)[:200]} failed ({completed.returncode}): {completed.stderr.decode()[-2000:]}")
    return elapsed


def shell(pipeline: str, cwd: Path) -> float:
    return timed(["bash", "-o", "pipefail", "-c", pipeline], cwd=cwd)


def psql(database: str, command: str) -> str:
    completed = subprocess.run(["psql", *PG, "-tAqc", command, database], capture_output=True, text=True, check=True)
    return completed.stdout.strip()


def drop(database: str) -> None:
    subprocess.run(["dropdb", *PG, "--if-exists", "--force", database], check=True)


def settle() -> None:
    """Before each timed restore: write out what the previous one left dirty (its WAL and
    buffers), so that neither restore pays for a checkpoint the other one caused."""
    psql("postgres", "CHECKPOINT")
    subprocess.run(["sync"], check=True)


def ensure_database(database: str, scale: int) -> None:
    if psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
        return
    print(f"building database {database} (scale {scale}), a few minutes ...", file=sys.stderr)
    subprocess.run(["createdb", *PG, database], check=True)
    subprocess.run(["psql", *PG, "-q", "-v", f"scale={scale}", "-f", str(SHARED), database], check=True)


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def make_project(work: Path, name: str, database: str) -> Path:
    project = work / name
    project.mkdir(parents=True)
    (project / "lockstep.toml").write_text(
        f'[repository]\nurl = "{work / "lockstep-repo"}"\n\n[databases.main]\nurl = "{SERVER}/{database}"\n'
    )
    return project


def lockstep(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lockstep", *arguments]


def one_round(database: str, work: Path) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    project = make_project(work, "project", database)
    timed(lockstep("repo", "init", "-r", str(work / "lockstep-repo")))
    timed(["restic", "init", "-q", "-r", str(work / "restic-repo"), "--cache-dir", str(work / "restic-cache")])
    result: dict[str, float] = {}
    dump = f"pg_dump {' '.join(PG)} {database}"

    result["gzip_s"] = shell(f"{dump} | gzip > {work / 'shop.sql.gz'}", work)
    result["gzip_bytes"] = (work / "shop.sql.gz").stat().st_size
    result["restic_s"] = shell(
        f"{dump} | RESTIC_CACHE_DIR={work / 'restic-cache'} restic -r {work / 'restic-repo'} backup -q --stdin"
        " --stdin-filename shop.sql",
        work,
    )
    result["restic_bytes"] = directory_bytes(work / "restic-repo")
    result["lockstep_s"] = timed(lockstep("snapshot", "create", "-m", "first"), cwd=project)
    result["lockstep_bytes"] = directory_bytes(work / "lockstep-repo")

    for target in (f"{database}_gunzip", f"{database}_restored"):
        drop(target)
    subprocess.run(["createdb", *PG, f"{database}_gunzip"], check=True)
    settle()
    result["gunzip_restore_s"] = shell(
        f"gunzip -c {work / 'shop.sql.gz'} | psql {' '.join(PG)} -q -v ON_ERROR_STOP=1 -o /dev/null {database}_gunzip",
        work,
    )
    drop(f"{database}_gunzip")
    # Both restore into an empty database made before the clock starts, as the issue words it:
    # until session 20 lockstep's time also held its own CREATE DATABASE (~0.1 s).
    subprocess.run(["createdb", *PG, f"{database}_restored"], check=True)
    settle()
    result["lockstep_restore_s"] = timed(
        lockstep(
            "snapshot", "restore", "latest", "--database", "main", "--to", f"{SERVER}/{database}_restored", "--yes"
        ),
        cwd=project,
    )
    drop(f"{database}_restored")
    (work / "shop.sql.gz").unlink()
    return result


def second_snapshot(database: str, work: Path) -> dict[str, float]:
    """First snapshot of the database, then one of a copy with 1 % of its rows changed."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    changed = f"{database}_changed"
    drop(changed)
    subprocess.run(["createdb", *PG, "-T", database, changed], check=True)
    psql(changed, CHANGE)
    timed(lockstep("repo", "init", "-r", str(work / "lockstep-repo")))
    result: dict[str, float] = {}
    result["first_s"] = timed(lockstep("snapshot", "create"), cwd=make_project(work, "first", database))
    result["first_bytes"] = directory_bytes(work / "lockstep-repo")
    result["second_s"] = timed(lockstep("snapshot", "create"), cwd=make_project(work, "second", changed))
    result["second_added"] = directory_bytes(work / "lockstep-repo") - result["first_bytes"]
    drop(changed)
    shutil.rmtree(work, ignore_errors=True)
    return result


def table(median: dict[str, float], second: dict[str, float], rounds: int, command: str) -> str:
    def row(measure: str, ours: str, theirs: str, ratio: float, target: float) -> str:
        verdict = "met" if ratio <= target else "not met"
        return f"| {measure} | {ours} | {theirs} | **{ratio:.2f}** | ≤ {target} | {verdict} |"

    def seconds(key: str) -> str:
        return f"{median[key]:.1f} s"

    def megabytes(value: float) -> str:
        return f"{value / 1e6:.1f} MB"

    lines = [
        f"Reproduce: `{command}` (medians of {rounds} rounds; the second snapshot measured once)",
        "",
        "| measure | lockstep | competitor | ratio | target | |",
        "|---|---|---|---|---|---|",
        row(
            "`snapshot create` vs `pg_dump \\| gzip`",
            seconds("lockstep_s"),
            seconds("gzip_s"),
            median["lockstep_s"] / median["gzip_s"],
            0.25,
        ),
        row(
            "`snapshot create` vs `pg_dump \\| restic backup --stdin`",
            seconds("lockstep_s"),
            seconds("restic_s"),
            median["lockstep_s"] / median["restic_s"],
            0.6,
        ),
        row(
            "`snapshot restore --to` (empty database, checked) vs `gunzip -c \\| psql`",
            seconds("lockstep_restore_s"),
            seconds("gunzip_restore_s"),
            median["lockstep_restore_s"] / median["gunzip_restore_s"],
            0.75,
        ),
        row(
            "second snapshot after 1 % of rows changed: bytes added vs the first's",
            megabytes(second["second_added"]),
            megabytes(second["first_bytes"]),
            second["second_added"] / second["first_bytes"],
            0.5,
        ),
        "",
        f"Stored: lockstep {megabytes(median['lockstep_bytes'])}, restic {megabytes(median['restic_bytes'])},"
        f" gzip {megabytes(median['gzip_bytes'])}; second snapshot took {second['second_s']:.1f} s"
        f" (first {second['first_s']:.1f} s).",
        f"Load average (1 min) at the start and end of the run: {median.get('load_start', 0):.1f},"
        f" {median.get('load_end', 0):.1f} on {os.cpu_count()} cores (other processes share the machine).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    # Outside this git work tree: a project inside it would snapshot lockstep's own (maybe
    # uncommitted) code, and `snapshot create` refuses a dirty tree.
    default_work = Path(tempfile.gettempdir()) / "lockstep-bench-snapshot-work"
    parser.add_argument("--work-dir", type=Path, default=default_work)
    arguments = parser.parse_args()
    # lockstep's bytecode, as an installed wheel has it: an editable install has none, and under
    # PYTHONDONTWRITEBYTECODE every measured command would compile ~60 modules first (~70 ms).
    compileall.compile_dir(str(ROOT / "src" / "lockstep"), quiet=1)
    print("blob IDs: " + hashing_mode(), file=sys.stderr)
    database = f"shop{arguments.scale}"
    ensure_database(database, arguments.scale)
    load_start = os.getloadavg()[0]
    rounds = []
    for number in range(arguments.rounds):
        rounds.append(one_round(database, arguments.work_dir))
        print(f"round {number + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in rounds[-1].items()), file=sys.stderr)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    median["load_start"], median["load_end"] = load_start, os.getloadavg()[0]
    second = second_snapshot(database, arguments.work_dir)
    shutil.rmtree(arguments.work_dir, ignore_errors=True)
    command = f"python bench/snapshot_vs_pg_dump.py --scale {arguments.scale} --rounds {arguments.rounds}"
    print(table(median, second, arguments.rounds, command))
    results = ROOT / "bench" / "results" / "snapshot_vs_pg_dump.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"median": median, "second": second, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
