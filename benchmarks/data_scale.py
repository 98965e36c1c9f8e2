"""Your own images at scale: decode throughput, warm start and a condensation's peak memory on
CIFAR-10 (60,000 images) and on a 4x larger collection (240,000 files) generated from it.

    python benchmarks/data_scale.py                      # CIFAR-10 from $HASHCONDENSE_DATA
    python benchmarks/data_scale.py --scale 1 --quick    # a minute-long check of the script

Steps, each in a fresh process so memory and start-up are what a user sees:
1. ``decode``: the collection is decoded cold into an empty cache (all cores, worker
   processes); images/s over the whole run.
2. ``warm_start``: ``make_split`` again with the cache present: listing the source, checking
   its signature and mapping the decoded file (the goal: <= 10 s for 240,000 files).
3. ``condense``: ``hashcondense condense --method iem --ipc 10`` for a few iterations with the
   same split rule on both collections (100 queries and 500 training images per class), peak
   RSS of that process (the goal: the larger run <= 1.5x the smaller one's).

The 4x collection is layout (b) (``train/<class>/``, ``test/<class>/``) in a temporary folder:
each CIFAR-10 JPEG written four times under new names, so the files are real JPEGs of the
same size (identical copies decode identically; only throughput and memory are measured).
Writes benchmarks/results/data_scale.jsonl (rows of this machine replaced) and data_scale.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

try:
    import hashcondense  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hashcondense.records import atomic_write_text, machine_info, read_jsonl, versions  # noqa

RESULTS = Path(__file__).resolve().parent / "results"
RULE = ["--query-per-class", "100", "--train-per-class", "500"]

PROBE = r"""
import json, resource, sys, time
t = time.perf_counter()
from hashcondense.data import make_split, resolve_protocol
spec = resolve_protocol(sys.argv[1], query_per_class=100, train_per_class=500)
split = make_split(spec, progress=False)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "images": sum(split.pools.values()),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "fingerprint": split.fingerprint()}))
"""


def run_probe(dataset: str, env: dict[str, str]) -> tuple[dict, float]:
    """The probe's JSON line and the child's wall seconds (interpreter start-up included)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, dataset], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"probe failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def make_larger(source_zip: Path, dest: Path, scale: int) -> int:
    """Write every JPEG of the zip ``scale`` times into ``dest`` (layout (b)); returns files."""
    n = 0
    with zipfile.ZipFile(source_zip) as zf:
        for name in zf.namelist():
            if not name.lower().endswith(".jpg"):
                continue
            parts = name.split("/")
            split, cls, stem = parts[-3], parts[-2], parts[-1][:-4]
            folder = dest / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            data = zf.read(name)
            for k in range(scale):
                (folder / f"{stem}_{k}.jpg").write_bytes(data)
                n += 1
    return n


def measure(label: str, dataset: str, cache: Path) -> dict:
    env = {**os.environ, "HASHCONDENSE_CACHE": str(cache), "OMP_NUM_THREADS": "2"}
    shutil.rmtree(cache, ignore_errors=True)
    cold, cold_s = run_probe(dataset, env)
    warm, warm_s = run_probe(dataset, env)
    return {"label": label, "images": cold["images"], "decode_seconds": cold["seconds"],
            "decode_images_per_s": cold["images"] / cold["seconds"],
            "warm_start_seconds": warm["seconds"], "warm_start_process_seconds": warm_s,
            "warm_maxrss_mb": warm["maxrss_kb"] / 1024, "fingerprint": cold["fingerprint"],
            "same_fingerprint_warm": cold["fingerprint"] == warm["fingerprint"]}


def condense_rss(dataset: str, cache: Path, iterations: int) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one condensation process, cache warm."""
    env = {**os.environ, "HASHCONDENSE_CACHE": str(cache), "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        code = ("import resource, sys, json; from hashcondense.cli import main; "
                "code = main(sys.argv[1:]); "
                "print(json.dumps({'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF)"
                ".ru_maxrss})); sys.exit(code)")
        done = subprocess.run(
            [sys.executable, "-c", code, "condense", "--dataset", dataset, *RULE, "--method",
             "iem", "--ipc", "10", "--iterations", str(iterations), "--compile", "off",
             "--out", out, "--quiet"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"condense failed: {done.stderr[-2000:]}")
        rss = json.loads(done.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024
    return rss, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("HASHCONDENSE_DATA"))
    parser.add_argument("--scale", type=int, default=4, help="copies of each CIFAR-10 file")
    parser.add_argument("--iterations", type=int, default=5, help="IEM iterations per run")
    parser.add_argument("--work", default=None, help="temp folder (default: system temp)")
    parser.add_argument("--quick", action="store_true", help="check the script, write nothing")
    args = parser.parse_args()
    if not args.data_root or not (Path(args.data_root) / "cifar10.zip").is_file():
        raise SystemExit("needs cifar10.zip: pass --data-root or set HASHCONDENSE_DATA")
    source = Path(args.data_root) / "cifar10.zip"
    load = os.getloadavg()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(dir=args.work, prefix="hashcondense-scale-") as tmp:
        tmp = Path(tmp)
        larger = tmp / f"cifar10x{args.scale}"
        t = time.perf_counter()
        files = make_larger(source, larger, args.scale)
        write_s = time.perf_counter() - t
        rows = [measure("cifar10 (60,000)", str(source), tmp / "cache-small"),
                measure(f"cifar10 x{args.scale} ({files:,} files)", str(larger),
                        tmp / "cache-large")]
        # peak RSS of the condensation, both with a warm cache, one after the other
        for row, dataset, cache in ((rows[0], source, "cache-small"),
                                    (rows[1], larger, "cache-large")):
            row["condense_maxrss_mb"], row["condense_wall_seconds"] = condense_rss(
                str(dataset), tmp / cache, args.iterations)
    ratio = rows[1]["condense_maxrss_mb"] / rows[0]["condense_maxrss_mb"]
    info = machine_info()
    machine = f"{info.get('cpu_model', '')} ({info.get('cpu_count')} cores)"
    common = {"date": started, "machine": machine, "machine_info": info,
              "versions": versions(), "loadavg_at_start": load, "seed": 0,
              "iterations": args.iterations, "rule": RULE, "generate_seconds": write_s,
              "command": "python benchmarks/data_scale.py " + " ".join(sys.argv[1:])}
    records = [{**common, "what": "data_scale", **r} for r in rows]
    records.append({**common, "what": "data_scale_rss_ratio", "value": ratio,
                    "goal": "<= 1.5", "met": ratio <= 1.5,
                    "warm_start_goal_met": rows[1]["warm_start_seconds"] <= 10})
    print(json.dumps(records, indent=1))
    if args.quick:
        return
    path = RESULTS / "data_scale.jsonl"
    kept = [r for r in read_jsonl(path) if r.get("machine") != machine]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                    for r in [*kept, *records]))
    lines = [
        "# Your own images at scale (`benchmarks/data_scale.py`)", "",
        f"{machine}, {started}, load average at start {load[0]:.2f}; "
        f"`{common['command']}`. Each step in a fresh process; decode with all cores.", "",
        "| collection | images | cold decode s | images/s | warm start s | condense peak RSS MB "
        f"| condense s ({args.iterations} IEM it.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['images']:,} | {r['decode_seconds']:.1f} | "
                     f"{r['decode_images_per_s']:,.0f} | {r['warm_start_seconds']:.2f} | "
                     f"{r['condense_maxrss_mb']:.0f} | {r['condense_wall_seconds']:.1f} |")
    lines += ["", f"Peak RSS ratio larger / smaller: **{ratio:.2f}** (goal <= 1.5: "
              f"{'met' if ratio <= 1.5 else 'missed'}); warm start of the larger collection "
              f"{rows[1]['warm_start_seconds']:.2f} s (goal <= 10 s: "
              f"{'met' if rows[1]['warm_start_seconds'] <= 10 else 'missed'}).", ""]
    atomic_write_text(RESULTS / "data_scale.md", "\n".join(lines))


if __name__ == "__main__":
    main()
