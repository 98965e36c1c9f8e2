"""The three loops users wait on — condensation iterations, hashing-network training, database
encoding — on the fast path against the plain fp32 eager implementation of the same work,
measured in one process on one machine, plus the absolute time of a full IEM condensation and of
one full evaluation.

    python benchmarks/speed.py            # CIFAR-10 from $HASHCONDENSE_DATA or --data-root
    python benchmarks/speed.py --quick    # a minute-long check of the script itself

Baselines (fp32, eager, contiguous NCHW, no chunking):
- ``iem_iteration``: one IEM iteration written as the public DM code writes it — a loop over
  classes, each class's 256 real images and its synthetic images through the network on their
  own, the real side with autograd on and detached — with the same fresh network, weight
  perturbation, DSA draws and loss as ours.
- ``train_epoch``: ``train_hashing_network`` with precision fp32 and compile off.
- ``encode``: ``encode_images`` with precision fp32 and compile off.
- ``judge_step``: one step of the ``paper`` recipe's judge (DHD, batch 256, two views), fp32
  eager against the recipe as it runs.
Fast path: precision ``auto`` (bf16 autocast where the CPU/GPU has native bf16), compile
``auto``, all classes in one pass with the real branch chunked (``runtime.default_chunk``).

Roofline: ``gemm_peak`` is a 4,096² matmul in the fast path's precision, in the same process;
``iem_iteration`` and ``judge_step`` carry the floating-point work of one iteration / step
(``torch.utils.flop_counter``) and the rate the fast path reaches, so a speed goal can be read
against what the machine can do at all (``floor_seconds``: the work at the matmul peak).

Medians over repeats after warm-up (compile time is excluded from per-iteration, per-epoch and
encode medians, included in the two totals). Rows of this machine in
benchmarks/results/speed.jsonl are replaced, rows of other machines (a GPU run) kept;
speed.md is regenerated from the file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    import hashcondense  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hashcondense.augment import DSAConfig, apply_dsa, sample_dsa_params  # noqa: E402
from hashcondense.condense import Budget  # noqa: E402
from hashcondense.condense.iem import IEM, PerturbConfig, perturb_weights  # noqa: E402
from hashcondense.condense.matching import (  # noqa: E402
    MatchingConfig,
    distribution_matching_loss,
    fresh_network,
    initial_synthetic,
)
from hashcondense.data import make_split  # noqa: E402
from hashcondense.evaluation import JudgeConfig, judge  # noqa: E402
from hashcondense.hashing import build_hash_method  # noqa: E402
from hashcondense.hashing.trainer import encode_images, train_hashing_network  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402
from hashcondense.recipes import training_recipe  # noqa: E402
from hashcondense.records import atomic_write_text, machine_info, versions  # noqa: E402
from hashcondense.runtime import resolve_device, resolve_precision  # noqa: E402
from hashcondense.synthetic import multi_formation_decode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED = 0
IPC = 10
log = logging.getLogger("speed")


def per_class_iem_iteration(train, stored: torch.Tensor, optimizer, *, it: int, factor: int,
                            batch_real: int, real: torch.Tensor, members: list[torch.Tensor],
                            generator: torch.Generator, hook_generator: torch.Generator) -> float:
    """One IEM iteration the way the DM reference loops: class by class, fp32, eager."""
    res, ipc = train.resolution, stored.shape[0] // len(members)
    net = fresh_network("convnet3", in_channels=train.channels, resolution=res,
                        seed=SEED * 1_000_003 + it)
    perturb_weights(net, PerturbConfig(), hook_generator)
    net.requires_grad_(False)
    loss = torch.zeros(())
    for c, m in enumerate(members):
        x_real = real[m[torch.randperm(len(m), generator=generator)[:batch_real]]]
        x_syn = multi_formation_decode(stored[c * ipc:(c + 1) * ipc], factor, res)
        params = sample_dsa_params(DSAConfig(), 1, generator=generator, siamese=True,
                                   height=res, width=res)
        real_means = net(apply_dsa(x_real, params)).detach().mean(0, keepdim=True)
        syn_means = net(apply_dsa(x_syn, params)).mean(0, keepdim=True)
        loss = loss + distribution_matching_loss(real_means, syn_means)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def time_baseline_iterations(train, norm: Normalization, repeats: int, batch_real: int) -> list:
    generator = torch.Generator().manual_seed(SEED)
    hook_generator = torch.Generator().manual_seed(SEED + 7_919)
    stored, _ = initial_synthetic(train, IPC, 2, norm, generator)
    stored.requires_grad_(True)
    optimizer = torch.optim.SGD([stored], lr=5.0, momentum=0.5)
    real = norm.normalize(train.images)
    members = [torch.nonzero(train.labels == c).flatten() for c in range(len(train.classes))]
    times = []
    for it in range(repeats + 1):
        start = time.perf_counter()
        per_class_iem_iteration(train, stored, optimizer, it=it, factor=2, batch_real=batch_real,
                                real=real, members=members, generator=generator,
                                hook_generator=hook_generator)
        times.append(time.perf_counter() - start)
        log.info("baseline iteration %d: %.2fs", it, times[-1])
    return times[1:]


def gemm_peak(dtype: torch.dtype | None, device: torch.device, repeats: int, size: int) -> float:
    """Seconds of one size² matmul in ``dtype`` (fp32 when None): the machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    b = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def counted_gflop(fn) -> float:
    """Floating-point work of one call of ``fn``, in GFLOP (multiply and add counted apart)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def fast_condense(train, norm: Normalization, iterations: int, batch_real: int, device: str):
    """The full IEM condensation on the fast path, with every iteration's end time."""
    stamps: list[float] = []
    iem = IEM(matching=MatchingConfig(lr=5.0, batch_real=batch_real, compile="auto",
                                      device=device))
    start = time.perf_counter()
    syn = iem.condense(train, IPC, normalization=norm, seed=SEED, progress=False,
                       budget=Budget(iterations=iterations,
                                     snapshots=tuple(range(1, iterations + 1))),
                       on_snapshot=lambda it, seconds, _: stamps.append(seconds))
    total = time.perf_counter() - start
    per_iteration = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return syn, total, per_iteration


def time_encoding(model, images, norm, *, repeats: int, **kwargs) -> list[float]:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        encode_images(model, images, norm.normalize, **kwargs)
        times.append(time.perf_counter() - start)
    return times[1:]


def row(what: str, baseline: list[float] | None, fast: list[float] | float, **extra) -> dict:
    fast_s = statistics.median(fast) if isinstance(fast, list) else fast
    base_s = statistics.median(baseline) if baseline else None
    return {"what": what, "baseline_seconds": base_s, "fast_seconds": fast_s,
            "ratio": base_s / fast_s if base_s else None, **extra}


def write_markdown(rows: list[dict], path: Path) -> None:
    goals = {"iem_iteration": "ratio >= 3; <= 0.6 s (issue 16)", "train_epoch": "ratio >= 2",
             "encode": "ratio >= 3", "iem_condense_total": "<= 180 s (CPU)",
             "evaluation_total": "<= 180 s (CPU)",
             "judge_step": "2,000 steps <= 360 s (issue 16): <= 0.18 s"}
    lines = ["# Speed: fast path vs plain fp32 eager, same work, same process", "",
             "Generated by `python benchmarks/speed.py`; medians after warm-up. "
             "See the script's docstring for what each baseline is. GFLOP: the work of one "
             "iteration or step; GFLOPS: the rate the fast path reaches; of peak: against "
             "`gemm_peak`, a large matmul in the same precision and process; floor: the work at "
             "that peak.", "",
             "| machine | what | precision | baseline s | fast s | ratio | GFLOP | GFLOPS | "
             "of peak | floor s | goal | work |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "–"
        lines.append(f"| {r['machine']} | {r['what']} | {r['precision']} | "
                     f"{fmt(r['baseline_seconds'], '.3f')} | {r['fast_seconds']:.3f} | {ratio} | "
                     f"{fmt(r.get('gflop'), '.1f')} | {fmt(r.get('gflops'), '.0f')} | "
                     f"{fmt(r.get('fraction_of_peak'), '.0%')} | "
                     f"{fmt(r.get('floor_seconds'), '.3f')} | {goals.get(r['what'], '')} | "
                     f"{r.get('work', '')} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets, results to outputs/speed-quick (checks the script)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = args.out or (ROOT / "outputs" / "speed-quick" if args.quick else RESULTS)
    device = resolve_device(args.device)
    amp = resolve_precision("auto", device)
    info = machine_info()
    machine = info.get("gpu") if device.type == "cuda" else info.get("cpu_model", "cpu")
    machine = f"{machine} ({info['cpu_count']} cores)" if device.type == "cpu" else machine
    q = args.quick
    iterations, base_iterations, batch_real = (12, 1, 32) if q else (200, 4, 256)
    train_epochs, base_epochs, encode_n = (4, 2, 1_000) if q else (12, 5, 10_000)
    judge_epochs = 4 if q else 10

    split = make_split("cifar10", args.data_root, seed=0)
    norm = Normalization.from_images(split.train.images)
    common = {"machine": machine, "device": str(device), "precision": str(amp or "fp32"),
              "versions": versions(), "machine_info": info, "seed": SEED,
              "protocol_fingerprint": split.fingerprint(),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rows = []

    log.info("IEM fast path: %d iterations", iterations)
    syn, total, per_it = fast_condense(split.train, norm, iterations, batch_real, args.device)
    fast_its = per_it[min(10, len(per_it) // 2):]  # past compilation and warm-up
    log.info("IEM baseline: %d per-class fp32 eager iterations", base_iterations)
    base_its = time_baseline_iterations(split.train, norm, base_iterations, batch_real)
    work = f"CIFAR-10 ipc {IPC}, f=2, 10x{batch_real} real/iteration, ConvNet-3"
    # the same work as the fast path's iteration: 10 x batch_real real forwards, the decoded
    # synthetic images forward and backward (the count does not depend on how it is batched)
    iem_gflop = counted_gflop(lambda: time_baseline_iterations(split.train, norm, 0, batch_real))
    rows.append(row("iem_iteration", base_its, fast_its, work=work, gflop=iem_gflop))
    rows.append(row("iem_condense_total", None, total,
                    work=f"{iterations} iterations incl. compile, {work}"))

    images, labels = syn.decode()
    images = images.detach()
    method = build_hash_method("dhd")
    recipe = training_recipe("cpu", whole=False)
    epochs = {}
    for name, config, n in (("fast", replace(recipe, min_steps=0, epochs=train_epochs), 2),
                            ("baseline", replace(recipe, min_steps=0, epochs=base_epochs,
                                                 precision="fp32", compile="off"), 1)):
        result = train_hashing_network(images, labels, method=method, bits=32, num_classes=10,
                                       config=replace(config, device=args.device), seed=SEED,
                                       progress=False)
        epochs[name] = result.epoch_seconds[n:]
        model = result.model
    rows.append(row("train_epoch", epochs["baseline"], epochs["fast"],
                    work=f"DHD 32 bits, {len(images)} images, batch {recipe.batch_size}, "
                         "two views"))

    judge_recipe = training_recipe("paper", whole=False)
    judge_images = images.repeat(2, 1, 1, 1)[: 2 * judge_recipe.batch_size]  # full batches
    judge_labels = labels.repeat(2)[: len(judge_images)]
    steps = {}
    for name, config, epochs_run in (
            ("fast", replace(judge_recipe, min_steps=0, epochs=judge_epochs), 2),
            ("baseline", replace(judge_recipe, min_steps=0, epochs=base_epochs,
                                 precision="fp32", compile="off"), 1)):
        result = train_hashing_network(judge_images, judge_labels, method=method, bits=32,
                                       num_classes=10, config=replace(config, device=args.device),
                                       seed=SEED, progress=False)
        steps[name] = [s / result.steps * result.epochs for s in result.epoch_seconds[epochs_run:]]
    judge_gflop = counted_gflop(lambda: train_hashing_network(
        judge_images[: judge_recipe.batch_size], judge_labels[: judge_recipe.batch_size],
        method=method, bits=32, num_classes=10, seed=SEED, progress=False,
        config=replace(judge_recipe, min_steps=0, epochs=1, precision="fp32", compile="off",
                       device=args.device)))
    rows.append(row("judge_step", steps["baseline"], steps["fast"], gflop=judge_gflop,
                    steps_per_judge=judge_recipe.min_steps,
                    work=f"paper-recipe judge step: DHD 32 bits, batch "
                         f"{judge_recipe.batch_size}, two views, ConvNet-3"))

    db = split.database.images[:encode_n]
    base_enc = time_encoding(model, db, norm, repeats=2, precision="fp32", compile="off")
    fast_enc = time_encoding(model, db, norm, repeats=3, precision="auto", compile="auto")
    rows.append(row("encode", base_enc, fast_enc,
                    work=f"{encode_n} CIFAR-10 images, DHD 32 bits, batch 500"))

    start = time.perf_counter()
    steps = 20 if q else recipe.min_steps
    config = JudgeConfig(train=replace(recipe, min_steps=steps, device=args.device))
    result = judge(images, labels, split, syn.normalization, config=config, seed=SEED,
                   progress=False)
    total = time.perf_counter() - start
    n_encoded = len(split.query.images) + len(split.database.images)
    rows.append(row("evaluation_total", None, total,
                    work=f"train {result.steps} steps + encode {n_encoded} + mAP; "
                         f"mAP@1000 {100 * result.metrics.get('mAP@1000', float('nan')):.2f}"))

    peak_s = gemm_peak(amp, device, repeats=5, size=1_024 if q else 4_096)
    peak = 2 * (1_024 if q else 4_096) ** 3 / peak_s / 1e9
    rows.append(row("gemm_peak", None, peak_s, gflops=peak,
                    work=f"one {1_024 if q else 4_096}² matmul in {amp or 'fp32'}"))
    for r in rows:
        if "gflop" in r:
            r["gflops"] = r["gflop"] / r["fast_seconds"]
            r["floor_seconds"] = r["gflop"] / peak
            r["fraction_of_peak"] = r["gflops"] / peak
    rows = [{**common, **r} for r in rows]
    path = out / "speed.jsonl"
    kept = []
    if path.exists():
        kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in kept if (r["machine"], r["device"]) != (machine, str(device))]
    all_rows = kept + rows
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rows))
    write_markdown(all_rows, out / "speed.md")
    for r in rows:
        ratio = f" ratio {r['ratio']:.2f}x" if r["ratio"] else ""
        print(f"{r['what']}: fast {r['fast_seconds']:.3f}s{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
