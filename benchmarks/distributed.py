"""Class-sharded IEM on torch.distributed (gloo on CPU): what N ranks buy on one machine, and
what one class costs at ImageNet resolutions (the basis of the ImageNet-1k estimate in
docs/distributed.md).

    python benchmarks/distributed.py              # CIFAR-10 from $HASHCONDENSE_DATA or --data-root
    python benchmarks/distributed.py --quick      # a minute-long check of the script itself

1. Scaling: IEM on CIFAR-10, ipc 10 (f = 2, 10×256 real images per iteration, ConvNet-3), as
   1 rank × 1 thread, 2 ranks × 1 thread (torchrun, gloo) and 1 rank × 2 threads. Wall time
   per iteration is the median over iterations after warm-up, read on rank 0 (the ranks meet
   at every iteration's loss gather, so rank 0's clock is the job's); peak memory is each
   rank's ``ru_maxrss`` (the CIFAR-10 split loaded by every rank included). The final tensors'
   SHA-256 shows whether the layouts computed the same set.
2. Per class: one IEM iteration (ipc 10, 256 real images per class, the default backbone:
   ConvNet-3 at 32 px, ResNetAP-10 above; f = 2 at 32 px, 3 above) on 1 and 2 classes of
   random images at 32/64/128 px, 1 thread: the difference is one class's time and memory.

Every row records machine, versions, seed, threads, os.getloadavg() at its start, wall times.
compile is off everywhere (the compile time would dominate these short runs); precision is
``auto`` (bf16 where the CPU has it). Rows of this machine in distributed.jsonl are replaced.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import hashcondense  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hashcondense.condense import Budget, Execution  # noqa: E402
from hashcondense.condense.iem import IEM  # noqa: E402
from hashcondense.condense.matching import MatchingConfig, classes_per_pass  # noqa: E402
from hashcondense.data import make_split  # noqa: E402
from hashcondense.data.sources import LabeledImages  # noqa: E402
from hashcondense.distributed import session  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402
from hashcondense.records import atomic_write_text, machine_info, versions  # noqa: E402
from hashcondense.runtime import resolve_precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED, IPC, BATCH_REAL = 0, 10, 256
LAYOUTS = ((1, 1), (2, 1), (1, 2))  # (ranks, threads per rank)
RESOLUTIONS = (32, 64, 128)
IMAGENET_CLASSES, IMAGENET_PER_CLASS, IMAGENET_RANKS = 1000, 1281, 8


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed_iem(train: LabeledImages, norm: Normalization, iterations: int, batch_real: int,
              execution: Execution) -> tuple[list[float], list[float], torch.Tensor, float]:
    """Per-iteration wall and CPU times (rank 0), the final stored images, the total
    seconds. CPU time is what the rank itself used: on a machine other jobs share, it shows
    the split of the work where wall time also shows the contention."""
    stamps: list[tuple[float, float]] = []
    iem = IEM(matching=MatchingConfig(lr=5.0, batch_real=batch_real, compile="off"))
    start = time.perf_counter()
    syn = iem.condense(train, IPC, normalization=norm, seed=SEED, progress=False,
                       budget=Budget(iterations=iterations,
                                     snapshots=tuple(range(1, iterations + 1))),
                       on_snapshot=lambda it, seconds, _: stamps.append(
                           (seconds, time.process_time())),
                       execution=execution)
    pairs = list(zip(stamps, stamps[1:], strict=False))
    return ([b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs], syn.images,
            time.perf_counter() - start)


def matmul_rate(seconds: float = 3.0) -> float:
    """512² fp32 matmuls per second on one thread: the unit of the capacity probe."""
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
    return n / (time.perf_counter() - start)


def free_cores() -> float:
    """How many cores two single-thread processes actually got just now: the sum of their
    matmul rates over one process's rate alone (2.0 on an idle 2-core machine)."""
    probe = [sys.executable, str(Path(__file__).resolve()), "--worker", "probe"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    alone = float(subprocess.run(probe, env=env, capture_output=True, text=True,
                                 check=True).stdout)
    pair = [subprocess.Popen(probe, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    return sum(float(p.communicate()[0]) for p in pair) / alone


def worker_scaling(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    torch.set_num_threads(args.threads)
    with session() as world:
        start = time.perf_counter()
        split = make_split("cifar10", args.data_root, seed=0)
        norm = Normalization.from_images(split.train.images)
        setup = time.perf_counter() - start
        per_it, cpu_it, images, total = timed_iem(split.train, norm, args.iterations,
                                                  args.batch_real, Execution(world))
        out = {"rank": world.rank, "ranks": world.size, "threads": args.threads,
               "backend": world.backend, "peak_rss_mb": peak_mb(), "setup_seconds": setup,
               "condense_seconds": total, "loadavg_start": load,
               "protocol_fingerprint": split.fingerprint()}
        if world.is_main:
            out.update(per_iteration=per_it, cpu_per_iteration=cpu_it,
                       images_sha256=hashlib.sha256(images.numpy().tobytes()).hexdigest())
        atomic_write_text(Path(args.result) / f"rank{world.rank}.json", json.dumps(out))


def worker_per_class(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    torch.set_num_threads(1)
    n = max(args.batch_real, IPC * 9) + 44  # > one batch and ipc·f² (the initialisation)
    g = torch.Generator().manual_seed(SEED)
    res, k = args.resolution, args.classes
    images = torch.randint(0, 256, (k * n, 3, res, res), dtype=torch.uint8, generator=g)
    train = LabeledImages(images, torch.arange(k).repeat_interleave(n),
                          tuple(f"class{i}" for i in range(k)))
    norm = Normalization.from_images(images)
    before = peak_mb()
    per_it, _, _, total = timed_iem(train, norm, args.iterations, args.batch_real,
                                    Execution())
    out = {"resolution": res, "classes": k, "peak_rss_mb": peak_mb(),
           "peak_rss_before_mb": before, "per_iteration": per_it, "condense_seconds": total,
           "loadavg_start": load, "real_images_per_class": n}
    atomic_write_text(Path(args.result) / "result.json", json.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker_args: list[str], ranks: int, threads: int, timeout: int) -> list[dict]:
    """Run this script as a worker (under torchrun when ranks > 1); the ranks' JSON rows."""
    with tempfile.TemporaryDirectory() as tmp:
        script = [str(Path(__file__).resolve()), *worker_args, "--result", tmp]
        command = [sys.executable, *script] if ranks == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *script]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": str(ROOT / "src")}
        subprocess.run(command, env=env, check=True, timeout=timeout)
        return [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]


def scaling_rows(args: argparse.Namespace, common: dict) -> list[dict]:
    rows = []
    for ranks, threads in LAYOUTS:
        print(f"scaling: {ranks} rank(s) x {threads} thread(s)", flush=True)
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        load, cores = os.getloadavg(), free_cores()
        parts = launch(["--worker", "scaling", "--threads", str(threads), "--iterations",
                        str(args.iterations), "--batch-real", str(args.batch_real)]
                       + (["--data-root", args.data_root] if args.data_root else []),
                       ranks, threads, timeout=3600)
        main = next(p for p in parts if p["rank"] == 0)
        measured = main["per_iteration"][args.warmup:]
        rows.append({**common, "what": "scaling", "ranks": ranks, "threads": threads,
                     "backend": main["backend"], "started": started, "loadavg_start": load,
                     "seconds_per_iteration": statistics.median(measured),
                     "cpu_seconds_per_iteration": statistics.median(
                         main["cpu_per_iteration"][args.warmup:]),
                     "free_cores_at_start": cores,
                     "per_iteration": main["per_iteration"], "warmup": args.warmup,
                     "peak_rss_mb_per_rank": [p["peak_rss_mb"] for p in parts],
                     "setup_seconds": main["setup_seconds"],
                     "condense_seconds": main["condense_seconds"],
                     "images_sha256": main["images_sha256"],
                     "protocol_fingerprint": main["protocol_fingerprint"],
                     "work": f"CIFAR-10 IEM ipc {IPC}, f=2, 10x{args.batch_real} real/iteration, "
                             f"ConvNet-3, {args.iterations} iterations"})
    base, base_cpu = rows[0]["seconds_per_iteration"], rows[0]["cpu_seconds_per_iteration"]
    for r in rows:
        r["speedup_vs_1x1"] = base / r["seconds_per_iteration"]
        r["cpu_split_vs_1x1"] = base_cpu / r["cpu_seconds_per_iteration"]
    return rows


def per_class_rows(args: argparse.Namespace, common: dict) -> list[dict]:
    rows = []
    for res in args.resolutions:
        runs = {}
        for k in (1, 2):
            print(f"per class: {res} px, {k} class(es)", flush=True)
            [runs[k]] = launch(["--worker", "per-class", "--resolution", str(res), "--classes",
                                str(k), "--iterations", str(args.class_iterations),
                                "--batch-real", str(args.batch_real)], 1, 1, timeout=3600)
        t = {k: statistics.median(runs[k]["per_iteration"][1:] or runs[k]["per_iteration"])
             for k in runs}
        rows.append({**common, "what": "per_class", "resolution": res, "threads": 1,
                     "loadavg_start": runs[1]["loadavg_start"],
                     "seconds_per_iteration": {str(k): v for k, v in t.items()},
                     "peak_rss_mb": {str(k): runs[k]["peak_rss_mb"] for k in runs},
                     "class_seconds": t[2] - t[1], "fixed_seconds": 2 * t[1] - t[2],
                     "class_mb": runs[2]["peak_rss_mb"] - runs[1]["peak_rss_mb"],
                     "fixed_mb": 2 * runs[1]["peak_rss_mb"] - runs[2]["peak_rss_mb"],
                     "real_images_per_class": runs[1]["real_images_per_class"],
                     "backbone": "convnet3" if res <= 32 else "resnetap10",
                     "factor": 2 if res <= 32 else 3,
                     "classes_per_pass": classes_per_pass(
                         MatchingConfig(factor=2 if res <= 32 else 3), IPC, res),
                     "work": f"IEM ipc {IPC}, {args.batch_real} random real images/class "
                             f"per iteration, {res} px, 1 thread"})
    return rows


def imagenet_estimate(row: dict) -> dict:
    """One rank of 8 on ImageNet-1k (125 classes): time is fixed + 125 × per class; memory is
    the 1-class peak, plus the graphs of the other classes that share a pass with it, plus
    every other class's synthetic state (images, gradient, momentum: 3 × ipc × 3 × R² fp32),
    plus the rank's real images as uint8 (1,281 per class; the decode cache is memory-mapped,
    so a rank touches only its classes' pages) instead of the benchmark's random ones."""
    classes = IMAGENET_CLASSES // IMAGENET_RANKS
    res, width = row["resolution"], row["classes_per_pass"]
    state_mb = 3 * IPC * 3 * res * res * 4 / 2**20
    bench_real_mb = row["real_images_per_class"] * 3 * res * res / 2**20
    graph_mb = max(row["class_mb"] - state_mb - bench_real_mb, 0) if width > 1 else 0.0
    working_mb = (row["peak_rss_mb"]["1"] - bench_real_mb + (min(classes, width) - 1) * graph_mb
                  + (classes - 1) * state_mb)
    return {"resolution": res, "classes_per_rank": classes, "classes_per_pass": width,
            "seconds_per_iteration": row["fixed_seconds"] + classes * row["class_seconds"],
            "working_gb": working_mb / 1024,
            "real_images_gb": classes * IMAGENET_PER_CLASS * 3 * res * res / 2**30}


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = ["# Class-sharded IEM: ranks on one machine, and per-class costs", "",
             "Generated by `python benchmarks/distributed.py`; see its docstring. compile off, "
             "precision auto. Load = os.getloadavg() (1, 5, 15 min) when the run started: "
             "other jobs shared the cores when it is above the ranks' thread count.", "",
             "## Scaling (CIFAR-10, IEM ipc 10)", "",
             "Free cores: two single-thread matmul loops run just before each layout, "
             "their summed rate over one loop's alone (2.0 = an idle 2-core machine). CPU s: "
             "the CPU time rank 0 itself used per iteration (its share of the work, "
             "whatever else ran).", "",
             "| machine | ranks × threads | s / iteration (median) | speed-up vs 1×1 | "
             "CPU s / iteration, rank 0 | peak RSS per rank (MB) | load at start | "
             "free cores | same tensors as 1×1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    scaling = [r for r in rows if r["what"] == "scaling"]
    for r in scaling:
        ref = next((s for s in scaling if s["machine"] == r["machine"] and s["ranks"] == 1
                    and s["threads"] == 1), None)
        same = "–" if ref is None else ("yes" if ref["images_sha256"] == r["images_sha256"]
                                        else "no")
        cpu = r.get("cpu_seconds_per_iteration")
        lines.append(f"| {r['machine']} | {r['ranks']} × {r['threads']} | "
                     f"{r['seconds_per_iteration']:.3f} | {r['speedup_vs_1x1']:.2f}× | "
                     f"{'–' if cpu is None else f'{cpu:.3f}'} | "
                     f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mb_per_rank'])} | "
                     f"{', '.join(f'{v:.2f}' for v in r['loadavg_start'])} | "
                     f"{r.get('free_cores_at_start', float('nan')):.2f} | {same} |")
    per_class = [r for r in rows if r["what"] == "per_class"]
    lines += ["", "## One IEM iteration per class (random images, 1 thread)", "",
              "| machine | px | backbone | s/it, 1 class | s/it, 2 classes | s per class | "
              "MB per class | fixed MB | load at start |", "|---|---|---|---|---|---|---|---|---|"]
    for r in per_class:
        t = r["seconds_per_iteration"]
        lines.append(f"| {r['machine']} | {r['resolution']} | {r['backbone']} | {t['1']:.2f} | "
                     f"{t['2']:.2f} | {r['class_seconds']:.2f} | {r['class_mb']:.0f} | "
                     f"{r['fixed_mb']:.0f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['loadavg_start'])} |")
    if per_class:
        lines += ["", f"## Estimate: ImageNet-1k, ipc {IPC}, {IMAGENET_RANKS} ranks "
                  f"({IMAGENET_CLASSES // IMAGENET_RANKS} classes each), 1 CPU thread per rank",
                  "", "Time: fixed + 125 × per class. Memory: the 1-class peak, the graphs of "
                  "the classes sharing a pass (`classes_per_pass`), the other classes' "
                  "synthetic state, and the rank's real images as uint8 (1,281 per class; "
                  "memory-mapped). An estimate from the rows above, not a run; a GPU rank is "
                  "far faster per class.", "",
                  "| px | classes per pass | s / iteration / rank | working memory / rank (GB) | "
                  "real images / rank (GB, uint8) |", "|---|---|---|---|---|"]
        for r in per_class:
            e = imagenet_estimate(r)
            lines.append(f"| {e['resolution']} | {e['classes_per_pass']} | "
                         f"{e['seconds_per_iteration']:.0f} | "
                         f"{e['working_gb']:.1f} | {e['real_images_gb']:.1f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets, results to outputs/distributed-quick")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--only", choices=("scaling", "per-class"), default=None)
    p.add_argument("--worker", choices=("scaling", "per-class", "probe"), default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--resolution", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--classes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--batch-real", type=int, default=None)
    args = p.parse_args(argv)
    q = args.quick
    args.iterations = args.iterations or (4 if q else 12)
    args.batch_real = args.batch_real or (32 if q else BATCH_REAL)
    if args.worker == "scaling":
        worker_scaling(args)
        return 0
    if args.worker == "per-class":
        worker_per_class(args)
        return 0
    if args.worker == "probe":
        print(matmul_rate(), flush=True)
        return 0
    args.warmup = 1 if q else 2
    args.class_iterations = 3
    args.resolutions = (32, 64) if q else RESOLUTIONS
    out = args.out or (ROOT / "outputs" / "distributed-quick" if q else RESULTS)
    info = machine_info()
    machine = f"{info.get('cpu_model', 'cpu')} ({info['cpu_count']} cores)"
    common = {"machine": machine, "machine_info": info, "versions": versions(), "seed": SEED,
              "ipc": IPC, "precision": str(resolve_precision("auto", torch.device("cpu"))
                                           or "fp32"),
              "compile": "off", "batch_real": args.batch_real,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rows = []
    if args.only in (None, "scaling"):
        rows += scaling_rows(args, common)
    if args.only in (None, "per-class"):
        rows += per_class_rows(args, common)
    path = out / "distributed.jsonl"
    kept = []
    if path.exists():
        kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in kept if (r["machine"], r["what"]) not in
                {(machine, w["what"]) for w in rows}]
    all_rows = kept + rows
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rows))
    write_markdown(all_rows, out / "distributed.md")
    for r in rows:
        if r["what"] == "scaling":
            print(f"{r['ranks']}x{r['threads']}: {r['seconds_per_iteration']:.3f} s/it, "
                  f"{r['speedup_vs_1x1']:.2f}x", flush=True)
        else:
            print(f"{r['resolution']} px: {r['class_seconds']:.2f} s and {r['class_mb']:.0f} MB "
                  "per class", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
