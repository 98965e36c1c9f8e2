"""Run an experiment grid: condense each (dataset, condenser, ipc, seed) once, judge every set
with every (task, hashing method, bits), append each finished cell to the result store.

Cells are identified by content hashes of their config (never by position or name), so: an
interrupted grid — killed or not — resumes where it stopped and never recomputes a finished
cell; a synthetic set is condensed once and reused across bit lengths, hashing methods, tasks
and experiments (the set cache is keyed the same way, and shared); and two experiments that ask
for the same set get the same set.

The identity is explicit, never a repr (see :func:`condense_identity`, :func:`judge_identity`):
a set is its data (dataset, resolution, split fingerprint), ipc, seed, the condenser's method,
``algorithm_version``, the options the grid gave and the precision, and — for iterative
condensers — the budget; a judged cell adds the set version, task, hashing method, bits,
backbone and the judge as the grid gives it (recipe name, overrides, precision, protocol).
``compile`` is in neither: it decides how the same maths runs. Its fused kernels do round
differently (DM on digits, 3 iterations on CPU: synthetic pixels differ by up to 2e-6 from
eager), so compiled and eager sets are not bit-identical; they are treated as the same set.
A new condenser or ``TrainConfig`` field with a default therefore re-keys nothing; a change to a
condenser's numbers must bump its ``algorithm_version``, and a change to a shipped judge
recipe's numbers must rename it.

Outputs of ``results_dir``: ``results.jsonl`` (one record per cell and metric, written
atomically), ``run.json`` (spec, versions, machine, protocols), ``curves/<cell>.json``
(precision–recall of Hamming-ball lookup) and ``previews/*.png`` (synthetic image grids).
Synthetic sets live in ``cache_dir`` (default ``<results_dir>/synthetic``, ignored by git),
with the checkpoints of a condensation under way (``<set>/checkpoints``) and of a judge under
way (``<set>/judges/<cell>``): a grid killed mid-condensation or mid-judge resumes it. Several
workers (``shard``) fill one store and share one cache; see ``sharding.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..classification import ClassificationConfig, evaluate_classification
from ..condense import (
    Budget,
    Checkpointing,
    Condenser,
    Execution,
    Runtime,
    check_ipc,
    checkpoint,
)
from ..condense.driver import parse_every
from ..data import RetrievalSplit, make_split
from ..evaluation import JudgeConfig, judge
from ..hashing import training_state
from ..hashing.trainer import TrainConfig
from ..hashing.training_state import TrainCheckpointing
from ..models import default_backbone
from ..normalization import Normalization
from ..recipes import training_recipe
from ..records import atomic_write_text, machine_info, machine_name, versions, write_json
from ..retrieval.metrics import precision_recall_curve
from ..runtime import resolve_device, resolve_precision
from ..synthetic import SyntheticSet
from .grid import VALIDATION_SPLIT, WHOLE, CondenserSpec, DatasetSpec, Experiment, JudgeSpec
from .sharding import Shard, file_lock
from .store import ResultStore, canonical, config_hash

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
CHECKPOINT_EVERY = "2m"  # a killed grid loses at most this much of a condensation or judge


@dataclass(frozen=True)
class Cell:
    """One judged training set: a (condensed) set version × task × hashing method × bits."""

    key: str
    condense_key: str
    seed: int
    dataset: DatasetSpec
    ipc: int | None
    condenser: CondenserSpec
    iteration: int | None  # a snapshot's iteration; None = the final set
    task: str
    hash_method: str | None
    bits: int | None


@dataclass
class RunSummary:
    ran: list[str]
    skipped: list[str]
    results: Path
    condensed: list[str] = dataclasses.field(default_factory=list)  # set keys condensed here


def resolve_budget(condenser: Condenser | None, spec: Budget | None) -> Budget | None:
    """The budget a condensation runs under: the grid's, with the condenser's reference
    iteration count where it gives none; None for condensers that take no budget (coresets, the
    whole set), so a budget never enters their identity."""
    if condenser is None or not condenser.iterative:
        return None
    spec = spec or Budget()
    if spec.iterations is None:
        spec = dataclasses.replace(spec, iterations=condenser.iterations)
    return spec


def condense_identity(*, dataset: str, resolution: int, fingerprint: str, ipc: int | None,
                      seed: int, cond: CondenserSpec, condenser: Condenser | None,
                      budget: Budget | None, precision: str) -> dict[str, Any]:
    """What makes a training set what it is (hashed into its cache key and ``condense_cell``).
    The whole split (``condenser`` None) is its data only."""
    identity: dict[str, Any] = {
        "dataset": dataset, "resolution": resolution, "protocol": fingerprint, "ipc": ipc,
        "seed": seed, "method": cond.method, "hashcondense": __version__,
    }
    if condenser is not None:
        identity.update(algorithm_version=type(condenser).algorithm_version,
                        options=canonical(cond.option_dict()), precision=precision,
                        budget=None if budget is None else canonical(asdict(budget)))
    return identity


def judge_identity(judge: JudgeSpec, *, whole: bool, precision: str, protocol: str
                   ) -> dict[str, Any]:
    """The judge's part of a cell's identity: the grid's words (recipe name, the overrides
    that apply, precision, protocol), not the resolved ``TrainConfig``."""
    return canonical({"recipe": judge.recipe, **judge.overrides(whole=whole),
                      "precision": precision, "protocol": protocol})


def cell_key(condense_key: str, *, iteration: int | None, task: str, hash_method: str | None,
             bits: int | None, backbone: str, judge: dict[str, Any]) -> str:
    return config_hash({"condense": condense_key, "iteration": iteration, "task": task,
                        "hash_method": hash_method, "bits": bits, "backbone": backbone,
                        "judge": judge})


class ExperimentRunner:
    """Holds the loaded splits and the store while a grid runs; see :func:`run_experiment`."""

    def __init__(self, exp: Experiment, results_dir: Path, *, data_root: str | None = None,
                 cache_dir: Path | None = None, progress: bool = True,
                 shard: Shard | None = None, checkpoint_every: str = CHECKPOINT_EVERY,
                 partial: bool = False) -> None:
        self.exp, self.results_dir, self.data_root = exp, Path(results_dir), data_root
        self.cache_dir = Path(cache_dir) if cache_dir else self.results_dir / "synthetic"
        self.progress = progress
        self.shard = shard or Shard()
        # ``exp`` is a part of its grid (bench --condensers / --datasets): the store keeps the
        # other parts' cells in its report
        self.partial = partial
        self.checkpoint_every = parse_every(checkpoint_every)
        self.store = ResultStore(self.results_dir / RESULTS_FILE)
        self.run_id = uuid.uuid4().hex[:12]
        self._splits: dict[tuple[str, int | None], tuple[RetrievalSplit, Normalization]] = {}
        self._judged: dict[tuple[str, int | None], RetrievalSplit] = {}
        runtime = Runtime(compile=exp.compile, precision=exp.precision)
        self._condensers = {c.label: None if c.method == WHOLE else c.build().with_runtime(runtime)
                            for c in exp.condensers}
        self.condensed: list[str] = []
        # once: the same for the whole run
        self.machine_info, self.versions = machine_info(), versions()
        self.machine = machine_name(self.machine_info)

    # -- configuration ------------------------------------------------------------------
    def split(self, ds: DatasetSpec) -> tuple[RetrievalSplit, Normalization]:
        """The protocol's split: condensation (and the normalisation) use its train set."""
        key = (ds.name, ds.resolution)
        if key not in self._splits:
            split = make_split(ds.name, self.data_root, seed=self.exp.split_seed,
                               resolution=ds.resolution)
            self._splits[key] = (split, Normalization.from_images(split.train.images))
        return self._splits[key]

    def judged_split(self, ds: DatasetSpec) -> RetrievalSplit:
        """The split the judge's queries and database come from: the protocol's test split, or
        (``protocol: validation``) a validation split carved from its database, never from its
        query set. The train set is the same either way."""
        split, _ = self.split(ds)
        if self.exp.protocol != "validation":
            return split
        key = (ds.name, ds.resolution)
        if key not in self._judged:
            self._judged[key] = split.validation(**VALIDATION_SPLIT)
        return self._judged[key]

    def train_config(self, whole: bool) -> TrainConfig:
        """The recipe with the judge's overrides — the same ones its cell identity hashes."""
        judge = self.exp.judge
        renamed = {"whole_epochs": "epochs", "steps": "min_steps"}  # the rest keep their names
        overrides = {renamed.get(k, k): v for k, v in judge.overrides(whole=whole).items()}
        return dataclasses.replace(training_recipe(judge.recipe, whole=whole), **overrides,
                                   precision=self.exp.precision, compile=self.exp.compile)

    @staticmethod
    def compute_dtype(train: TrainConfig) -> str:
        """What ``precision`` resolved to here: ``auto`` means fp32 on a CPU without native bf16,
        and the machine's name alone does not tell an AVX2 host from an AVX512-BF16 one."""
        dtype = resolve_precision(train.precision, resolve_device(train.device))
        names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return names.get(dtype, str(dtype))

    def budget(self, cond: CondenserSpec) -> Budget | None:
        """The budget ``cond`` condenses under (None: it takes none); see
        :func:`resolve_budget`."""
        return resolve_budget(self._condensers[cond.label], self.exp.budget_for(cond.label))

    def condense_key(self, seed: int, ds: DatasetSpec, ipc: int | None,
                     cond: CondenserSpec) -> str:
        split, _ = self.split(ds)
        return config_hash(condense_identity(
            dataset=ds.name, resolution=split.train.resolution, fingerprint=split.fingerprint(),
            ipc=ipc, seed=seed, cond=cond, condenser=self._condensers[cond.label],
            budget=self.budget(cond), precision=self.exp.precision))

    def versions_of(self, cond: CondenserSpec, condense_key: str) -> list[int | None]:
        """The set versions judged: each snapshot before the end, then the final set (only the
        final set where the grid says ``judge_snapshots: false``). Coresets (no iterations) take
        no snapshots; a wall-clock budget may end before a snapshot, so
        once a set is condensed, only the snapshots it saved count."""
        budget = self.budget(cond)
        if budget is None or not self.exp.judge_snapshots:
            return [None]
        limit = budget.iterations
        wanted = [s for s in budget.snapshots if limit is None or s < limit]
        folder = self.cache_dir / condense_key
        if (folder / "final.json").exists():
            wanted = [s for s in wanted if (folder / f"snapshot-{s}.json").exists()]
        return [*wanted, None]

    def cells_of(self, seed: int, ds: DatasetSpec, ipc: int, cond: CondenserSpec) -> list[Cell]:
        whole = cond.method == WHOLE
        ckey = self.condense_key(seed, ds, None if whole else ipc, cond)
        split, _ = self.split(ds)
        backbone = default_backbone(split.train.resolution)
        judge = judge_identity(self.exp.judge, whole=whole, precision=self.exp.precision,
                               protocol=self.exp.protocol)
        cells = []
        for iteration in self.versions_of(cond, ckey):
            for task in self.exp.tasks:
                heads = [(h, b) for h in self.exp.hash_methods for b in self.exp.bits] \
                    if task == "retrieval" else [(None, None)]
                for hash_method, bits in heads:
                    key = cell_key(ckey, iteration=iteration, task=task,
                                   hash_method=hash_method, bits=bits, backbone=backbone,
                                   judge=judge)
                    cells.append(Cell(key, ckey, seed, ds, None if whole else ipc, cond,
                                      iteration, task, hash_method, bits))
        return cells

    def all_cells(self) -> list[Cell]:
        return [c for args in self.exp.cells() for c in self.cells_of(*args)]

    # -- work ---------------------------------------------------------------------------
    def training_sets(self, cells: list[Cell], *, wait: bool = True
                      ) -> dict[int | None, tuple[Any, Any, float, dict]] | None:
        """Images, labels, condensation seconds and metadata of every set version needed;
        None when ``wait`` is off and another worker is condensing the set right now."""
        first = cells[0]
        split, norm = self.split(first.dataset)
        if first.condenser.method == WHOLE:
            return {None: (norm.normalize(split.train.images), split.train.labels, 0.0, {})}
        folder = self.cache_dir / first.condense_key
        needed = {c.iteration for c in cells}
        final = folder / "final.json"
        if not final.exists():
            with file_lock(folder, wait=wait) as held:
                if not held:
                    return None
                if not final.exists():  # another worker may have finished it meanwhile
                    self._condense(first, split, norm, folder)
        preview = self.results_dir / "previews" / (
            f"{first.dataset.name}_{first.condenser.label}_ipc{first.ipc}_seed{first.seed}.png")
        if not preview.exists():  # also for a set condensed by another experiment
            SyntheticSet.load(final).export_grid_png(preview, max_per_class=10, upscale=1)
        out = {}
        for iteration in needed:
            path = final if iteration is None else folder / f"snapshot-{iteration}.json"
            if not path.exists():
                continue
            syn = SyntheticSet.load(path)
            images, labels = syn.decode()
            seconds = float(syn.metadata.get("wall_seconds", syn.metadata.get("seconds", 0.0)))
            out[iteration] = (images.detach(), labels, seconds, syn.metadata)
        return out

    def _condense(self, cell: Cell, split: RetrievalSplit, norm: Normalization,
                  folder: Path) -> None:
        condenser = self._condensers[cell.condenser.label]
        budget = self.budget(cell.condenser)
        folder.mkdir(parents=True, exist_ok=True)
        checkpoints = folder / "checkpoints"
        resumed = checkpoint.latest(checkpoints)
        done_before = 0.0 if resumed is None else resumed.position.seconds
        for stale in folder.glob("snapshot-*.json"):  # an interrupted run's, past its checkpoint
            iteration = int(stale.stem.split("-")[1])
            if resumed is None or iteration > resumed.position.iteration:
                stale.unlink()
                stale.with_suffix(".safetensors").unlink(missing_ok=True)
        every_iterations, every_seconds = self.checkpoint_every
        execution = Execution(checkpointing=Checkpointing(
            checkpoints, every_iterations, every_seconds, resume=True))
        self._ignore_cache()
        start = time.perf_counter()

        def on_snapshot(iteration: int, seconds: float, syn: SyntheticSet) -> None:
            # the same clock as the final set's (setup and compilation included) for Fig. 3
            syn.metadata.update(protocol_fingerprint=split.fingerprint(),
                                wall_seconds=time.perf_counter() - start + done_before)
            syn.save(folder / f"snapshot-{iteration}")

        log.info("condense %s ipc=%d seed=%d on %s", cell.condenser.label, cell.ipc, cell.seed,
                 cell.dataset.name)
        syn = condenser.condense(split.train, cell.ipc, normalization=norm, seed=cell.seed,
                                 budget=budget, on_snapshot=on_snapshot, progress=self.progress,
                                 execution=execution)
        syn.metadata.update(protocol_fingerprint=split.fingerprint(), dataset=cell.dataset.name,
                            wall_seconds=time.perf_counter() - start + done_before,
                            label=cell.condenser.label)
        syn.save(folder / "final")  # last: its presence marks the condensation complete
        checkpoint.remove(checkpoints)
        self.condensed.append(cell.condense_key)

    def _ignore_cache(self) -> None:
        """Synthetic sets and checkpoints never reach a commit."""
        gitignore = self.cache_dir / ".gitignore"
        if not gitignore.exists():
            atomic_write_text(gitignore, "*\n")

    def judge_cell(self, cell: Cell, images: torch.Tensor, labels: torch.Tensor,
                   condense_seconds: float, metadata: dict) -> None:
        _, norm = self.split(cell.dataset)
        split = self.judged_split(cell.dataset)
        whole = cell.condenser.method == WHOLE
        train = self.train_config(whole)
        backbone = default_backbone(split.train.resolution)
        # a judge killed mid-training resumes from here (an ipc-50 set's takes about an hour)
        every_epochs, every_seconds = self.checkpoint_every
        checkpoints = TrainCheckpointing(
            self.cache_dir / cell.condense_key / "judges" / cell.key, every_seconds,
            every_epochs)
        self._ignore_cache()
        if cell.task == "retrieval":
            result = judge(images, labels, split, norm, seed=cell.seed, progress=self.progress,
                           config=JudgeConfig(backbone=backbone, hash_method=cell.hash_method,
                                              bits=cell.bits, train=train),
                           checkpoints=checkpoints)
            metrics, steps = result.metrics, result.steps
            train_s, encode_s = result.train_seconds, result.evaluation.encode_seconds
            ev = result.evaluation
            curve = precision_recall_curve(ev.query_codes.numpy(), ev.db_codes.numpy(),
                                           split.query.labels.numpy(),
                                           split.database.labels.numpy())
            write_json(self.results_dir / "curves" / f"{cell.key}.json",
                       {"bits": cell.bits, **{k: v.tolist() for k, v in curve.items()}})
        else:
            result = evaluate_classification(
                images, labels, split, norm, seed=cell.seed, progress=self.progress,
                config=ClassificationConfig(backbone=backbone, train=train),
                checkpoints=checkpoints)
            metrics, steps = {"accuracy": result.accuracy}, result.steps
            train_s, encode_s = result.train_seconds, result.eval_seconds
        condenser = self._condensers[cell.condenser.label]
        budget = self.budget(cell.condenser)
        base = {
            "cell": cell.key, "condense_cell": cell.condense_key, "run_id": self.run_id,
            "experiment": self.exp.name, "profile": self.exp.profile,
            "dataset": cell.dataset.name, "resolution": split.train.resolution,
            "condenser": cell.condenser.label, "method": cell.condenser.method,
            "options": cell.condenser.option_dict(),
            "ipc": cell.ipc, "seed": cell.seed, "iteration": cell.iteration,
            "iterations": metadata.get("iterations"), "updates": metadata.get("steps"),
            "condense_seconds": condense_seconds,
            "budget": None if budget is None else asdict(budget),
            "task": cell.task, "hash_method": cell.hash_method, "bits": cell.bits,
            "backbone": backbone, "train_seconds": train_s, "encode_seconds": encode_s,
            "judge": {"recipe": self.exp.judge.recipe, "steps": steps,
                      "batch_size": train.batch_size,
                      # epochs bound the whole split's training (and a condensed set's where
                      # the grid floors them); a step-budgeted set has none
                      "epochs": train.epochs if whole else self.exp.judge.epochs,
                      # only when on: a plain judge's record keeps the shape it always had
                      **({"cutmix": train.cutmix} if train.cutmix else {}),
                      **{k: getattr(train, k) for k in ("strong_augment", "strong_augment_mode")
                         if getattr(self.exp.judge, k) is not None}},
            "precision": self.exp.precision,
            "compute_dtype": self.compute_dtype(train),
            **({} if condenser is None
               else {"algorithm_version": type(condenser).algorithm_version}),
            "protocol": self.exp.protocol, "protocol_fingerprint": split.fingerprint(),
            "machine": self.machine, "versions": self.versions,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.store.add(cell.key, [{**base, "metric": m, "value": float(v)}
                                  for m, v in metrics.items()])
        training_state.remove(checkpoints.directory)  # the record supersedes them
        with contextlib.suppress(OSError):  # the set's judges/ folder, once the last is done
            checkpoints.directory.parent.rmdir()
        log.info("%s %s ipc=%s seed=%d %s %s%s: %s", cell.dataset.name, cell.condenser.label,
                 cell.ipc, cell.seed, cell.task, cell.hash_method or "", cell.bits or "",
                 {m: round(100 * v, 2) for m, v in metrics.items()})

    def write_run_file(self, cells: list[str] | None = None) -> None:
        with file_lock(self.results_dir):  # sharded workers update it too
            self._write_run_file(cells)

    def _write_run_file(self, cells: list[str] | None) -> None:
        path = self.results_dir / RUN_FILE
        previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        protocols = dict(previous.get("protocols", {}))
        listed = previous.get("cells", [])
        if cells is not None:  # a part of the grid keeps the other parts' cells
            listed = sorted({*cells, *self._other_parts(listed)} if self.partial else cells)
        for ds in self.exp.datasets:  # the splits judged on
            if (ds.name, ds.resolution) in self._splits:
                split = self.judged_split(ds)
                protocols[split.protocol] = split.describe()
        write_json(path, {
            "experiment": self.exp.name, "profile": self.exp.profile,
            "description": self.exp.description, "metric": self.exp.metric,
            "spec": asdict(self.exp), "versions": self.versions, "machine": self.machine_info,
            "protocols": protocols, "cache_dir": str(self.cache_dir),
            # the report shows these cells only: results of an earlier config may share the store
            "cells": listed,
            "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })

    def _other_parts(self, listed: list[str]) -> set[str]:
        """The ``listed`` cells that belong to datasets or condensers outside this part of the
        grid, told by their records: a grid filled a condenser at a time reports them all,
        while this part's own cells are replaced by its current ones (an earlier config of the
        same condenser drops out, as in a whole run)."""
        listed_set = set(listed)
        mine = {(ds.name, c.label) for ds in self.exp.datasets for c in self.exp.condensers}
        return {r["cell"] for r in self.store.rows()
                if r.get("cell") in listed_set
                and (r.get("dataset"), r.get("condenser")) not in mine}

    def run(self, on_cell: Callable[[Cell], None] | None = None) -> RunSummary:
        """Every cell of this worker's shard that the store does not hold. A set that another
        worker is condensing is put off until the others are done, then waited for."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        done = self.store.done()
        ran, skipped = [], []
        groups = [self.cells_of(*args) for args in self.exp.cells()]
        for _, ds, ipc, cond in self.exp.cells():  # an impossible ipc fails before any work
            if cond.method != WHOLE:
                check_ipc(self.split(ds)[0].train, ipc)
        keys = [c.key for g in groups for c in g]  # the whole grid's, whatever the shard
        self.write_run_file(keys)
        mine = [[c for c in g if self.shard.owns(c.key)] for g in groups]
        mine = [g for g in mine if g]
        total = sum(len(g) for g in mine)
        bar = tqdm(total=total, desc=f"{self.exp.name}/{self.exp.profile}", unit="cell",
                   disable=None if self.progress else True)
        deferred = []
        for group in mine:
            pending = [c for c in group if c.key not in done]
            skipped += [c.key for c in group if c.key in done]
            bar.update(len(group) - len(pending))
            if pending and not self._run_group(pending, done, ran, bar, on_cell, wait=False):
                deferred.append(pending)
        for pending in deferred:
            self._run_group(pending, done, ran, bar, on_cell, wait=True)
        bar.close()
        return RunSummary(ran, skipped, self.store.path, list(self.condensed))

    def _run_group(self, pending: list[Cell], done: set[str], ran: list[str], bar: tqdm,
                   on_cell: Callable[[Cell], None] | None, *, wait: bool) -> bool:
        """Judge ``pending`` (cells of one set); False when the set is busy and ``wait`` off."""
        sets = self.training_sets(pending, wait=wait)
        if sets is None:
            return False
        for cell in pending:
            if cell.iteration not in sets:
                log.warning("%s %s ipc=%s: no snapshot at iteration %d (the budget ended "
                            "first); its cells are dropped", cell.dataset.name,
                            cell.condenser.label, cell.ipc, cell.iteration)
                bar.update(1)
                continue
            images, labels, seconds, metadata = sets[cell.iteration]
            self.judge_cell(cell, images, labels, seconds, metadata)
            ran.append(cell.key)
            done.add(cell.key)
            bar.update(1)
            if on_cell is not None:
                on_cell(cell)
        self.write_run_file()
        return True


def run_experiment(exp: Experiment, results_dir: str | Path, *, data_root: str | None = None,
                   cache_dir: str | Path | None = None, progress: bool = True,
                   on_cell: Callable[[Cell], None] | None = None,
                   shard: Shard | None = None, partial: bool = False) -> RunSummary:
    """Run (or resume) every cell of ``exp`` (of ``shard``'s part of it) that ``results_dir``
    does not hold yet. ``partial``: ``exp`` is a part of a grid (:func:`restrict_condensers`,
    :func:`restrict_datasets`) whose other parts share ``results_dir`` and its report."""
    runner = ExperimentRunner(exp, Path(results_dir), data_root=data_root,
                              cache_dir=Path(cache_dir) if cache_dir else None,
                              progress=progress, shard=shard, partial=partial)
    return runner.run(on_cell)


def plan(exp: Experiment, results_dir: str | Path, *, data_root: str | None = None,
         cache_dir: str | Path | None = None,
         shard: Shard | None = None) -> list[tuple[Cell, bool]]:
    """Every cell of ``exp`` (of ``shard``'s part) and whether ``results_dir`` already holds
    it (a dry run)."""
    runner = ExperimentRunner(exp, Path(results_dir), data_root=data_root, progress=False,
                              cache_dir=Path(cache_dir) if cache_dir else None)
    done = runner.store.done()
    shard = shard or Shard()
    return [(c, c.key in done) for c in runner.all_cells() if shard.owns(c.key)]
