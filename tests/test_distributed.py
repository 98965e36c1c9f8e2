"""Scale-out and long runs: class sharding over torch.distributed ranks (gloo on CPU), the
shared loop's checkpoints, and resuming a killed condensation bit-identically."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")  # digits is the small real dataset

from processes import sigkill_after_first  # noqa: E402

from hashcondense.condense import Budget, Checkpointing, Execution, build_condenser  # noqa: E402
from hashcondense.condense import checkpoint as ckpt  # noqa: E402
from hashcondense.condense.driver import parse_every  # noqa: E402
from hashcondense.condense.streams import stream_seed  # noqa: E402
from hashcondense.data import make_split  # noqa: E402
from hashcondense.distributed import World, backend_for, class_slice  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402
from hashcondense.synthetic import SyntheticSet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "wall_seconds", "compiled"}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def digits():
    split = make_split("digits", resolution=8)
    return split.train, Normalization.from_images(split.train.images)


# -- units ------------------------------------------------------------------------------------

@pytest.mark.parametrize("classes,size", [(10, 1), (10, 2), (10, 3), (1000, 8), (7, 7)])
def test_class_slices_partition_the_classes_in_order_and_balanced(classes, size):
    slices = [class_slice(classes, r, size) for r in range(size)]
    assert [c for s in slices for c in s] == list(range(classes))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_a_world_refuses_more_ranks_than_classes_and_picks_its_backend():
    with pytest.raises(ValueError, match="cannot be shared"):
        World(rank=0, size=3, backend="gloo").owned_classes(2)
    assert backend_for(True) == "nccl" and backend_for(False) == "gloo"
    assert World().gather_classes(torch.ones(4, 2), 2).shape == (4, 2)


def test_streams_differ_by_purpose_class_and_iteration():
    seeds = {stream_seed(0, p, c, t) for p in ("class", "init") for c in range(3)
             for t in range(3)}
    assert len(seeds) == 18 and stream_seed(0, "class", 1, 2) == stream_seed(0, "class", 1, 2)


@pytest.mark.parametrize("text,expected", [("50", (50, None)), ("10m", (None, 600.0)),
                                           ("90s", (None, 90.0)), ("1.5h", (None, 5400.0))])
def test_checkpoint_interval_is_iterations_or_wall_time(text, expected):
    assert parse_every(text) == expected


@pytest.mark.parametrize("text", ["", "1.5", "ten", "5d"])
def test_bad_checkpoint_intervals_are_refused(text):
    with pytest.raises(ValueError, match="checkpoint interval"):
        parse_every(text)


def iem(**matching):
    return build_condenser("iem", matching={"batch_real": 16, "compile": "off",
                                            "precision": "fp32", **matching})


# -- resumable condensation -------------------------------------------------------------------

def dsa():
    return build_condenser("dsa", matching={"outer_loop": 2, "inner_loop": 1,
                                            "batch_real": 8, "batch_train": 8,
                                            "compile": "off", "precision": "fp32"})


def iem_interpolated():  # DANCE: resuming redraws the network's initial weights from its seed
    return iem(trained_networks={"inner_loop": 3, "steps": 2, "batch": 8, "interpolate": True})


def iem_queue():  # IDM: a full queue of 3 at the checkpoint; the oldest leaves on resuming
    return iem(trained_networks={"inner_loop": 1, "steps": 1, "batch": 8, "queue": 3,
                                 "train_count": 2})


def iem_queue_mixed():  # DANCE on a queue: an older member's initial weights are redrawn
    return iem(trained_networks={"inner_loop": 2, "steps": 1, "batch": 8, "queue": 4,
                                 "train_count": 1, "interpolate": True})


def idc():  # the network lives 3 iterations: a checkpoint at 4 falls inside its life
    return build_condenser("idc", matching={"inner_loop": 2, "batch_real": 8, "n_data": 16,
                                            "reinit_every": 3, "compile": "off",
                                            "precision": "fp32"})


def iem_trained():  # the trained network lives 3 iterations: a checkpoint at 4 falls inside
    return iem(trained_networks={"inner_loop": 3, "steps": 2, "batch": 8})


@pytest.mark.parametrize("make,state", [
    (iem, {"momentum_buffer"}), (dsa, {"momentum_buffer", "generator_state"}),
    (iem_trained, {"momentum_buffer", "trained_net.0", "trained_net_momentum.0"}),
    (iem_interpolated, {"momentum_buffer", "trained_net.0"}),
    (iem_queue, {"trained_net_joined", "trained_net.0", "trained_net1.0", "trained_net2.0"}),
    (iem_queue_mixed, {"trained_net_joined", "trained_net.0", "trained_net1.0"}),
    (idc, {"momentum_buffer", "generator_state", "stored", "net.fc.weight"})])
def test_resuming_from_a_checkpoint_equals_the_uninterrupted_run(digits, tmp_path, make,
                                                                 state):
    train, norm = digits
    kwargs = dict(normalization=norm, seed=3, progress=False)
    whole = make().condense(train, 2, budget=Budget(iterations=6), **kwargs)
    first = Execution(checkpointing=Checkpointing(tmp_path, every_iterations=2))
    make().condense(train, 2, budget=Budget(iterations=5), execution=first, **kwargs)
    saved = ckpt.latest(tmp_path)
    assert saved is not None and saved.position.iteration == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # older generations removed
        "ckpt-00000004-state.safetensors", "ckpt-00000004.json", "ckpt-00000004.safetensors"]
    assert state <= set(saved.state)
    again = Execution(checkpointing=Checkpointing(tmp_path, every_iterations=2, resume=True))
    resumed = make().condense(train, 2, budget=Budget(iterations=6), execution=again,
                              **kwargs)
    assert resumed.metadata["resumed_from"]["iteration"] == 4
    assert torch.equal(resumed.images, whole.images)
    assert resumed.metadata["final_loss"] == whole.metadata["final_loss"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(digits, tmp_path):
    train, norm = digits
    syn = iem().condense(train, 1, budget=Budget(iterations=1), normalization=norm, seed=0,
                         progress=False)
    ckpt.save(tmp_path, ckpt.Position(2, 2, 1.0), syn, {"x": torch.ones(3)})
    (tmp_path / "keep").mkdir()
    older = {p.name: p.read_bytes() for p in tmp_path.glob("ckpt-*")}
    ckpt.save(tmp_path, ckpt.Position(4, 4, 2.0), syn, {"x": torch.zeros(3)})
    for name, data in older.items():  # as if the kill came before the old ones were removed
        (tmp_path / name).write_bytes(data)
    (tmp_path / "ckpt-00000004-state.safetensors").write_bytes(b"torn")
    found = ckpt.latest(tmp_path)
    assert found is not None and found.position == ckpt.Position(2, 2, 1.0)
    assert torch.equal(found.state["x"], torch.ones(3))
    ckpt.remove(tmp_path)
    assert not list(tmp_path.glob("ckpt-*")) and (tmp_path / "keep").is_dir()


CONDENSE = ["-m", "hashcondense", "condense", "--dataset", "digits", "--resolution", "8",
            "--method", "iem", "--ipc", "2", "--compile", "off", "--quiet", "--seed", "1"]


def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(tmp_path):
    """A condensation killed with SIGKILL and resumed ends with the same tensors as one that
    ran through (CPU; iteration budget)."""
    budget = ["--iterations", "40"]
    clean = subprocess.Popen([sys.executable, *CONDENSE, *budget, "--out",
                              str(tmp_path / "clean")], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    victim_out = tmp_path / "victim"
    command = [sys.executable, *CONDENSE, *budget, "--checkpoint-every", "5", "--out",
               str(victim_out)]
    sigkill_after_first(command, env(), victim_out / "checkpoints", "ckpt-*.json")
    assert not (victim_out / "synthetic.json").exists()
    killed_at = ckpt.latest_iteration(victim_out / "checkpoints")
    assert killed_at is not None and 5 <= killed_at < 40
    subprocess.run([*command, "--resume"], env=env(), check=True, timeout=300,
                   capture_output=True)
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode()[-2000:]
    a = SyntheticSet.load(tmp_path / "clean" / "synthetic.json")
    b = SyntheticSet.load(victim_out / "synthetic.json")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert b.metadata["resumed_from"]["iteration"] == killed_at
    assert a.metadata["final_loss"] == b.metadata["final_loss"]
    assert not (victim_out / "checkpoints").exists()  # the final set supersedes them


# -- class sharding over ranks ----------------------------------------------------------------

def comparable(record: dict) -> dict:
    meta = {k: v for k, v in record["metadata"].items() if k not in TIMING}
    return {"metadata": meta, **{k: record[k] for k in ("dataset", "method", "ipc", "seed",
                                                        "protocol")}}


def test_two_gloo_ranks_condense_exactly_what_one_process_does(tmp_path):
    """IEM (weight perturbation, multi-formation, DSA) on digits: 2 ranks × 5 classes each
    give bit-identical tensors and the same records as 1 process with the same seed."""
    budget = ["--iterations", "4"]
    single = subprocess.Popen([sys.executable, *CONDENSE, *budget, "--out",
                               str(tmp_path / "one")], env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_addr", "127.0.0.1", "--master_port",
                          str(free_port()), *CONDENSE, *budget, "--out", str(tmp_path / "two")],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert single.wait(timeout=300) == 0, single.stderr.read().decode()[-2000:]
    a = SyntheticSet.load(tmp_path / "one" / "synthetic.json")
    b = SyntheticSet.load(tmp_path / "two" / "synthetic.json")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    one_rec = json.loads((tmp_path / "one" / "condense.json").read_text())
    two_rec = json.loads((tmp_path / "two" / "condense.json").read_text())
    assert two_rec["world"] == {"size": 2, "backend": "gloo"}
    assert comparable(one_rec) == comparable(two_rec)
    assert two.stdout.count("condensed digits") == 1  # rank 0 alone reports and writes


def test_gradient_matching_refuses_several_ranks_with_a_clear_message(digits):
    train, norm = digits
    world = World(rank=0, size=2, backend="gloo")  # refused before any collective
    for name in ("dsa", "idc"):
        with pytest.raises(ValueError, match=f"{name} does not support world size > 1 yet"):
            build_condenser(name).condense(train, 1, normalization=norm, seed=0,
                                           budget=Budget(iterations=1), progress=False,
                                           execution=Execution(world=world))
    with pytest.raises(ValueError, match="trained_networks does not support world size"):
        iem_trained().condense(train, 1, normalization=norm, seed=0, progress=False,
                               budget=Budget(iterations=1), execution=Execution(world=world))


# -- grids across workers, and the runner's checkpoints ---------------------------------------

GRID = """
name: tiny
grid:
  datasets: {cifar10: {ipcs: [10]}}
  condensers: [random, iem]
profiles:
  smoke:
    datasets: {digits: {ipcs: [1, 2], resolution: 8}}
    condensers:
      - random
      - dm: {options: {matching: {batch_real: 8}}}
      - iem: {options: {matching: {batch_real: 8}}}
    bits: [16, 24]
    budgets: {default: {iterations: 3}}
    judge: {recipe: smoke}
    precision: fp32
    compile: "off"
"""


def grid(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(GRID)
    return path


def test_two_shard_workers_fill_one_store_once_and_share_the_sets(tmp_path):
    from hashcondense.experiments import load_experiment, plan
    from hashcondense.experiments.sharding import Shard
    from hashcondense.records import read_jsonl

    config, out, cache = grid(tmp_path), tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "hashcondense", "bench", str(config), "--profile",
               "smoke", "--quiet", "--no-report", "--out", str(out), "--cache-dir", str(cache)]
    exp = load_experiment(config, "smoke")
    shards = [{c.key for c, _ in plan(exp, out, cache_dir=cache, shard=Shard(i, 2))}
              for i in range(2)]
    shared = {c.condense_key for c, _ in plan(exp, out, cache_dir=cache)
              if c.key in shards[0]} & {c.condense_key for c, _ in plan(exp, out, cache_dir=cache)
                                        if c.key in shards[1]}
    assert shards[0] and shards[1] and shared  # the grid makes both workers need one set
    workers = [subprocess.Popen([*command, "--shard", f"{i}/2"], env=env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr[-3000:]
    everything = plan(exp, out, cache_dir=cache)
    assert all(done for _, done in everything)
    rows = read_jsonl(out / "results.jsonl")
    per_cell: dict[str, set] = {}
    for r in rows:
        per_cell.setdefault(r["cell"], set()).add(r["run_id"])
    assert set(per_cell) == {c.key for c, _ in everything}  # the union is the whole grid
    assert all(len(ids) == 1 for ids in per_cell.values())  # each cell computed by one worker
    metrics = [(r["cell"], r["metric"]) for r in rows]
    assert len(metrics) == len(set(metrics))  # and stored once
    ran = [int(stdout.split("ran ")[1].split()[0]) for stdout, _ in outputs]
    assert ran == [len(shards[0]), len(shards[1])]
    condensed = [int(stdout.split("condensed ")[1].split()[0]) for stdout, _ in outputs]
    assert sum(condensed) == len({c.condense_key for c, _ in everything
                                  if c.condenser.method != "random"}) + 2  # random: 2 ipcs
    assert not list(cache.glob("*/checkpoints"))


def test_the_runner_resumes_a_half_done_condensation(tmp_path, monkeypatch):
    from hashcondense.experiments import load_experiment
    from hashcondense.experiments.runner import ExperimentRunner
    from hashcondense.records import read_jsonl

    exp = load_experiment(grid(tmp_path), "smoke")
    exp = type(exp)(**{**exp.__dict__, "condensers": exp.condensers[2:],
                       "datasets": (type(exp.datasets[0])("digits", (2,), 8),)})
    save = SyntheticSet.save

    def crash_on_final(self, where):
        if Path(where).name == "final":
            raise KeyboardInterrupt  # as if killed after the last checkpoint
        return save(self, where)

    monkeypatch.setattr(SyntheticSet, "save", crash_on_final)
    runner = ExperimentRunner(exp, tmp_path / "crashed", progress=False, checkpoint_every="1")
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    [folder] = (tmp_path / "crashed" / "synthetic").glob("*/checkpoints")
    assert ckpt.latest_iteration(folder) == 2
    monkeypatch.setattr(SyntheticSet, "save", save)
    again = ExperimentRunner(exp, tmp_path / "crashed", progress=False, checkpoint_every="1")
    again.run()
    final = SyntheticSet.load(folder.parent / "final.json")
    assert final.metadata["resumed_from"]["iteration"] == 2 and not folder.exists()
    clean = ExperimentRunner(exp, tmp_path / "clean", progress=False)
    clean.run()
    assert torch.equal(final.images,
                       SyntheticSet.load(next((tmp_path / "clean" / "synthetic").glob(
                           "*/final.json"))).images)
    rows = read_jsonl(tmp_path / "crashed" / "results.jsonl")
    assert {r["algorithm_version"] for r in rows} == {2}


def test_the_runner_resumes_a_half_done_judge(tmp_path, monkeypatch):
    """A grid killed mid-judge (after a training checkpoint) resumes that judge's training
    and records what an uninterrupted grid records; the checkpoints go once the cell is in."""
    from hashcondense.experiments import load_experiment
    from hashcondense.experiments.runner import ExperimentRunner
    from hashcondense.hashing import training_state
    from hashcondense.records import read_jsonl

    exp = load_experiment(grid(tmp_path), "smoke")
    exp = type(exp)(**{**exp.__dict__, "condensers": exp.condensers[:1], "bits": (16,),
                       "datasets": (type(exp.datasets[0])("digits", (2,), 8),)})
    save, saves, resumed = training_state.save, [], []

    def killed_after_two(*args, **kwargs):
        path = save(*args, **kwargs)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt  # as if killed right after the second checkpoint
        return path

    monkeypatch.setattr(training_state, "save", killed_after_two)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        ExperimentRunner(exp, crashed, progress=False, checkpoint_every="1").run()
    assert read_jsonl(crashed / "results.jsonl") == []
    [folder] = (crashed / "synthetic").glob("*/judges/*")
    assert [p.name for p in folder.glob("*.json")] == ["train-00000002.json"]
    latest = training_state.latest

    def spy(directory, run):
        found = latest(directory, run)
        resumed.append(None if found is None else found[0].epoch)
        return found

    monkeypatch.setattr(training_state, "save", save)
    monkeypatch.setattr(training_state, "latest", spy)
    ExperimentRunner(exp, crashed, progress=False, checkpoint_every="1").run()
    assert resumed == [2] and not folder.parent.exists()  # judges/ goes with its last cell
    ExperimentRunner(exp, tmp_path / "clean", progress=False).run()
    timing = {"train_seconds", "encode_seconds", "condense_seconds", "finished_at", "run_id"}
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(d)]
            for d in (crashed / "results.jsonl", tmp_path / "clean" / "results.jsonl")]
    assert rows[0] == rows[1] and len(rows[0]) >= 1


def test_a_new_loop_version_rekeys_dm_and_iem_only(tmp_path, monkeypatch):
    from hashcondense.condense.iem import IEM
    from hashcondense.experiments import load_experiment
    from hashcondense.experiments.runner import ExperimentRunner

    exp = load_experiment(grid(tmp_path), "smoke")
    runner = ExperimentRunner(exp, tmp_path / "out", progress=False)
    ds = exp.datasets[0]

    def keys() -> dict[str, str]:
        return {c.label: runner.condense_key(0, ds, 1, c) for c in exp.condensers}

    now = keys()
    monkeypatch.setattr(IEM, "algorithm_version", 1)
    before = keys()
    assert before["iem"] != now["iem"]
    assert before["random"] == now["random"] and before["dm"] == now["dm"]


def test_classes_per_pass_bound_memory_without_changing_the_result(digits):
    """The synthetic side of a pass keeps its graph; passes of fewer classes give the same
    tensors (each class's gradient comes from its own loss term)."""
    train, norm = digits
    runs = [iem(class_batch=width).condense(train, 2, budget=Budget(iterations=3),
                                            normalization=norm, seed=5, progress=False)
            for width in (None, 1, 3)]
    assert runs[0].metadata["classes_per_pass"] == 10 and runs[1].metadata[
        "classes_per_pass"] == 1
    for other in runs[1:]:
        assert torch.equal(other.images, runs[0].images)
        assert other.metadata["final_loss"] == runs[0].metadata["final_loss"]


def test_a_dead_rank_ends_the_job_clearly_and_a_restart_resumes_on_any_world(tmp_path):
    """Kill one of 2 ranks after a checkpoint: the job fails naming the way on; resuming with
    1 process ends bit-identical to an uninterrupted single-process run (checkpoints hold
    every class)."""
    budget = ["--iterations", "40"]
    clean = subprocess.Popen([sys.executable, *CONDENSE, *budget, "--out",
                              str(tmp_path / "clean")], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    out = tmp_path / "job"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                            "2", "--master_addr", "127.0.0.1", "--master_port",
                            str(free_port()), *CONDENSE, *budget, "--checkpoint-every", "5",
                            "--out", str(out)], env=env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and job.poll() is None:
            if list((out / "checkpoints").glob("ckpt-*.json")):
                break
            time.sleep(0.01)
        ranks = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True,
                               text=True).stdout.split()
        assert job.poll() is None and len(ranks) == 2, "the job ended before a rank was killed"
        os.kill(int(max(ranks, key=int)), signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and "restart the job with --resume" in stderr
    assert not (out / "synthetic.json").exists()
    subprocess.run([sys.executable, *CONDENSE, *budget, "--checkpoint-every", "5", "--resume",
                    "--out", str(out)], env=env(), check=True, timeout=300, capture_output=True)
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode()[-2000:]
    a = SyntheticSet.load(tmp_path / "clean" / "synthetic.json")
    b = SyntheticSet.load(out / "synthetic.json")
    assert b.metadata["resumed_from"]["iteration"] >= 5
    assert torch.equal(a.images, b.images)
