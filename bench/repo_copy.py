#!/usr/bin/env python3
"""Benchmark: `lockstep repo copy` against `restic copy`, same source repository, same run.

The source repository is written once by lockstep: two snapshots of a tree that looks like a
server's (the Python standard library: thousands of small files; pg_dump output of the shop
database's orders, customers and products tables; a few incompressible files), the second after
a realistic change. Each round copies both snapshots into fresh destinations with each tool and
reports medians and the ratio lockstep / restic. Usage, from the repository root:

    python bench/repo_copy.py                     # 3 rounds, local source, then source on S3
    python bench/repo_copy.py --rounds 1 --no-s3  # quick look
    python bench/repo_copy.py --baseline-src ../main-checkout/src   # before/after, same run

With the source on S3 (moto's server on loopback, as the tests use) every request is an HTTP
round trip, so the number of range reads matters as much as the bytes. restic gets a fresh cache
directory each round: both tools start cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup_stream import PG, directory_bytes, run_measured  # noqa: E402

SOURCE_PASSWORD = "benchmark source password"
DESTINATION_PASSWORD = "benchmark destination password"
LOCKSTEP = [sys.executable, "-m", "lockstep", "repo"]
S3_KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def ensure_tree(data_dir: Path) -> Path:
    """The tree to back up, built once and kept (about 330 MB)."""
    tree = data_dir / "copy-tree"
    if (tree / ".complete").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    print("building the tree ...", file=sys.stderr)
    stdlib = Path(os.__file__).parent
    ignore = shutil.ignore_patterns("site-packages", "test", "idlelib")
    shutil.copytree(stdlib, tree / "python-stdlib", symlinks=True, ignore=ignore)
    dumps = tree / "dumps"
    dumps.mkdir()
    for table in ("orders", "customers", "products"):
        with open(dumps / f"{table}.sql", "wb") as out:
            subprocess.run(["pg_dump", *PG, "-t", table, "shop8"], stdout=out, check=True)
    blobs = tree / "media"
    blobs.mkdir()
    for number in range(8):
        (blobs / f"image-{number}.bin").write_bytes(os.urandom(4 * 1024 * 1024 + number))
    (tree / ".complete").write_bytes(b"")
    return tree


def change_tree(tree: Path) -> None:
    """A day's change: one dump grows by 1 %, a few small files are rewritten, one file is new."""
    dump = tree / "dumps" / "customers.sql"
    with open(dump, "ab") as out:
        out.write(dump.read_bytes()[: dump.stat().st_size // 100])
    for path in sorted((tree / "python-stdlib").glob("*.py"))[:20]:
        path.write_bytes(path.read_bytes() + b"\n# changed\n")
    (tree / "media" / "new.bin").write_bytes(os.urandom(2 * 1024 * 1024))


def build_source(tree: Path, work: Path) -> Path:
    """A lockstep repository holding two snapshots of the tree, before and after a change."""
    source = work / "source-repo"
    copy = work / "source-tree"
    shutil.copytree(tree, copy, symlinks=True)
    env = {"LOCKSTEP_PASSWORD": SOURCE_PASSWORD}
    run_measured([*LOCKSTEP, "init", "-r", str(source)], env=env)
    run_measured([*LOCKSTEP, "backup", "-r", str(source), str(copy)], env=env)
    change_tree(copy)
    run_measured([*LOCKSTEP, "backup", "-r", str(source), str(copy)], env=env)
    shutil.rmtree(copy)
    return source


def copy_env(source: str, work: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **extra,
        "LOCKSTEP_PASSWORD": DESTINATION_PASSWORD,
        "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD,
        "RESTIC_PASSWORD": DESTINATION_PASSWORD,
        "RESTIC_FROM_PASSWORD": SOURCE_PASSWORD,
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }


def one_round(source: str, work: Path, extra: dict[str, str], baseline: Path | None) -> dict[str, float]:
    """Copy `source` into a fresh local destination with each tool (restic first, then lockstep,
    then, if given, lockstep from the `baseline` source tree: before/after in the same run)."""
    for name in ("restic-dest", "lockstep-dest", "baseline-dest", "restic-cache"):
        shutil.rmtree(work / name, ignore_errors=True)
    env = copy_env(source, work, extra)
    restic_dest, lockstep_dest = work / "restic-dest", work / "lockstep-dest"
    run_measured(["restic", "init", "-r", str(restic_dest)], env=env)
    run_measured([*LOCKSTEP, "init", "-r", str(lockstep_dest)], env=env)
    result: dict[str, float] = {}
    result["restic_s"], result["restic_rss_kib"] = run_measured(
        ["restic", "-r", str(restic_dest), "copy", "-q", "--from-repo", source], env=env
    )
    result["lockstep_s"], result["lockstep_rss_kib"] = run_measured(
        [*LOCKSTEP, "copy", "-r", str(lockstep_dest), "--from-repo", source], env=env
    )
    if baseline is not None:
        baseline_dest = work / "baseline-dest"
        baseline_env = {**env, "PYTHONPATH": str(baseline)}
        run_measured([*LOCKSTEP, "init", "-r", str(baseline_dest)], env=baseline_env)
        result["baseline_s"], result["baseline_rss_kib"] = run_measured(
            [*LOCKSTEP, "copy", "-r", str(baseline_dest), "--from-repo", source], env=baseline_env
        )
    result["restic_bytes"] = directory_bytes(restic_dest)
    result["lockstep_bytes"] = directory_bytes(lockstep_dest)
    return result


def measure(label: str, rounds: int, run: Callable[[], dict[str, float]]) -> None:
    results = []
    for number in range(rounds):
        result = run()
        results.append(result)
        print(
            f"{label} round {number + 1}: restic {result['restic_s']:.1f} s, lockstep {result['lockstep_s']:.1f} s",
            file=sys.stderr,
        )
    median = {key: statistics.median(result[key] for result in results) for key in results[0]}
    print(f"\n{label}, {rounds} rounds, medians:")
    print(f"  restic copy:   {median['restic_s']:.2f} s, peak RSS {median['restic_rss_kib'] / 1024:.0f} MiB")
    print(f"  lockstep copy: {median['lockstep_s']:.2f} s, peak RSS {median['lockstep_rss_kib'] / 1024:.0f} MiB")
    print(f"  wall time, lockstep / restic: {median['lockstep_s'] / median['restic_s']:.2f}")
    if "baseline_s" in median:
        print(
            f"  baseline lockstep copy: {median['baseline_s']:.2f} s, "
            f"peak RSS {median['baseline_rss_kib'] / 1024:.0f} MiB"
        )
        print(f"  wall time, baseline lockstep / restic: {median['baseline_s'] / median['restic_s']:.2f}")
    print(f"  destination bytes, lockstep / restic: {median['lockstep_bytes'] / median['restic_bytes']:.3f}")


def start_s3() -> tuple[str, Callable[[], None]]:
    from tests.s3_server import start_moto_server

    return start_moto_server()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/lockstep-bench"))
    parser.add_argument("--no-s3", action="store_true", help="only the local source")
    parser.add_argument(
        "--baseline-src", type=Path, help="also time lockstep from this src/ directory (e.g. a checkout of main)"
    )
    args = parser.parse_args()
    tree = ensure_tree(args.data_dir)
    work = args.data_dir / "repo-copy"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    source = build_source(tree, work)
    print(
        f"source: {directory_bytes(tree) / 1e6:.0f} MB tree, repository {directory_bytes(source) / 1e6:.0f} MB, "
        f"built in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    measure(
        "local source -> local destination", args.rounds, lambda: one_round(str(source), work, {}, args.baseline_src)
    )
    if args.no_s3:
        return
    endpoint, stop = start_s3()
    try:
        s3_source = f"s3:{endpoint}/bench/source"
        env = {**S3_KEYS, "LOCKSTEP_PASSWORD": SOURCE_PASSWORD, "LOCKSTEP_FROM_PASSWORD": SOURCE_PASSWORD}
        run_measured([*LOCKSTEP, "init", "-r", s3_source], env=env)
        run_measured([*LOCKSTEP, "copy", "-r", s3_source, "--from-repo", str(source)], env=env)
        measure(
            "S3 source (moto, loopback) -> local destination",
            args.rounds,
            lambda: one_round(s3_source, work, S3_KEYS, args.baseline_src),
        )
    finally:
        stop()


if __name__ == "__main__":
    main()
