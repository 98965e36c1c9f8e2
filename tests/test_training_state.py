"""Resumable training of a hashing network (the judge): a run interrupted after a checkpoint and
resumed ends bit-identical on CPU to one that ran through, and a checkpoint of another run, or a
damaged one, is never resumed from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import sigkill_after_first
from safetensors.torch import load_file

from hashcondense.classification import CrossEntropyClassifier
from hashcondense.hashing import build_hash_method, training_state
from hashcondense.hashing import trainer as trainer_module
from hashcondense.hashing.trainer import TrainConfig, train_hashing_network
from hashcondense.hashing.training_state import TrainCheckpointing

REPO = Path(__file__).resolve().parents[1]
# three steps an epoch, both views augmented, CutMix on about half the batches
CONFIG = dict(epochs=5, batch_size=4, cutmix=0.5, precision="fp32", device="cpu")


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 3, 8, 8, generator=g), torch.arange(12) % 3


def _train(images, labels, *, seed=1, method="dhd", checkpoints=None, **cfg):
    classifier = method == "classifier"  # the classification judge's one-view "method"
    return train_hashing_network(
        images, labels, bits=3 if classifier else 8, num_classes=3,
        method=CrossEntropyClassifier() if classifier else build_hash_method(method),
        config=TrainConfig(**{**CONFIG, **cfg}), seed=seed, progress=False,
        checkpoints=checkpoints)


def _interrupted(monkeypatch, at_step: int, **kwargs):
    """Train until optimiser step ``at_step`` starts, then fail as a kill would."""
    real = trainer_module._lr_factor

    def lr_factor(schedule, step, total):
        if step == at_step:
            raise KeyboardInterrupt
        return real(schedule, step, total)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "_lr_factor", lr_factor)
        with pytest.raises(KeyboardInterrupt):
            _train(*_data(), **kwargs)


def _same(a, b) -> None:
    assert a.losses == b.losses and a.steps == b.steps and a.epochs == b.epochs
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method,optimizer", [("dhd", "adam"), ("dpn", "sgd"),
                                              ("orthohash", "adam"), ("classifier", "adam")])
def test_resuming_after_an_interruption_is_bit_identical(tmp_path, monkeypatch, method,
                                                         optimizer):
    clean = _train(*_data(), method=method, optimizer=optimizer)
    policy = TrainCheckpointing(tmp_path, every_seconds=None, every_epochs=1)
    _interrupted(monkeypatch, 10, method=method, optimizer=optimizer, checkpoints=policy)
    # killed in epoch 4: epoch 3's generation is the one left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train-00000003.json", "train-00000003.safetensors"]
    resumed = _train(*_data(), method=method, optimizer=optimizer, checkpoints=policy)
    assert resumed.resumed_from == 3 and clean.resumed_from is None
    _same(resumed, clean)


def test_a_run_with_checkpoints_computes_what_one_without_does(tmp_path):
    plain = _train(*_data())
    saved = _train(*_data(), checkpoints=TrainCheckpointing(tmp_path, None, every_epochs=1))
    _same(saved, plain)
    assert saved.resumed_from is None
    # the last epoch saves nothing: the result itself is the caller's to keep
    assert [p.name for p in tmp_path.glob("*.json")] == ["train-00000004.json"]


def test_resuming_leaves_the_global_generator_alone(tmp_path, monkeypatch):
    policy = TrainCheckpointing(tmp_path, None, every_epochs=1)
    _interrupted(monkeypatch, 7, checkpoints=policy)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert _train(*_data(), checkpoints=policy).resumed_from == 2
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("change", [
    {"seed": 2}, {"lr": 2e-3}, {"cutmix": 0.0}, {"method": "dpn"}, {"data": 1}])
def test_a_checkpoint_of_another_run_is_never_resumed_from(tmp_path, monkeypatch, change):
    policy = TrainCheckpointing(tmp_path, None, every_epochs=1)
    _interrupted(monkeypatch, 10, checkpoints=policy)
    change = dict(change)
    data = _data(change.pop("data", 0))
    other = _train(*data, checkpoints=policy, **change)
    assert other.resumed_from is None
    _same(other, _train(*data, **change))


def test_without_resume_a_run_starts_afresh_and_replaces_the_old_checkpoint(tmp_path,
                                                                           monkeypatch):
    policy = TrainCheckpointing(tmp_path, None, every_epochs=1)
    _interrupted(monkeypatch, 10, checkpoints=policy)
    fresh = _train(*_data(), checkpoints=TrainCheckpointing(tmp_path, None, 1, resume=False))
    assert fresh.resumed_from is None
    _same(fresh, _train(*_data()))
    assert [p.name for p in tmp_path.glob("*.json")] == ["train-00000004.json"]


def test_a_checkpoint_of_another_trainer_version_is_not_resumed_from(tmp_path, monkeypatch):
    policy = TrainCheckpointing(tmp_path, None, every_epochs=1)
    _interrupted(monkeypatch, 10, checkpoints=policy)
    monkeypatch.setattr(training_state, "TRAINER_VERSION", training_state.TRAINER_VERSION + 1)
    assert _train(*_data(), checkpoints=policy).resumed_from is None


def test_a_damaged_checkpoint_is_not_resumed_from(tmp_path, monkeypatch, caplog):
    policy = TrainCheckpointing(tmp_path, None, every_epochs=1)
    _interrupted(monkeypatch, 10, checkpoints=policy)
    state = tmp_path / "train-00000003.safetensors"
    state.write_bytes(state.read_bytes()[:-8] + b"torn....")
    again = _train(*_data(), checkpoints=policy)
    assert again.resumed_from is None
    assert "does not match the recorded digest" in caplog.text
    _same(again, _train(*_data()))


def test_remove_keeps_a_folder_that_holds_other_files(tmp_path, monkeypatch):
    policy = TrainCheckpointing(tmp_path, None, every_epochs=1)
    _interrupted(monkeypatch, 4, checkpoints=policy)
    (tmp_path / "keep.txt").write_text("x")
    (tmp_path / ".train-00000005.safetensors.a1b2.tmp").write_bytes(b"cut short by a kill")
    training_state.remove(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    (tmp_path / "keep.txt").unlink()
    training_state.remove(tmp_path)
    assert not tmp_path.exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"every_seconds": 0}, "positive"), ({"every_seconds": None, "every_epochs": 0}, ">= 1"),
    ({"every_seconds": None}, "every_seconds or every_epochs")])
def test_bad_policies_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainCheckpointing(tmp_path, **kwargs)


TRAIN = ["-m", "hashcondense", "train", "--dataset", "digits", "--resolution", "8", "--subset",
         "random", "--ipc", "3", "--epochs", "100", "--batch-size", "8", "--precision", "fp32",
         "--compile", "off", "--quiet", "--seed", "2"]


def test_sigkill_mid_training_then_resume_is_bit_identical(tmp_path):
    """``hashcondense train`` killed with SIGKILL after a checkpoint and run again with
    ``--resume`` saves the same weights as a run that went through, and no checkpoint stays."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    clean = subprocess.Popen([sys.executable, *TRAIN, "--out", str(tmp_path / "clean")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = tmp_path / "victim"
    command = [sys.executable, *TRAIN, "--checkpoint-every", "5", "--out", str(out)]
    sigkill_after_first(command, env, out / "checkpoints", "train-*.json")
    assert not (out / "model.safetensors").exists()
    # the newest: a kill between a commit and the old generation's removal leaves two
    saved = max((out / "checkpoints").glob("train-*.json"))
    assert 5 <= json.loads(saved.read_text())["epoch"] < 100
    subprocess.run([*command, "--resume"], env=env, check=True, timeout=300,
                   capture_output=True)
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode()[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert 5 <= run["resumed_from_epoch"] < 100 and not (out / "checkpoints").exists()
    a, b = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "clean", out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
