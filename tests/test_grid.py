"""Grid files: self-checking spec dataclasses built by one ``from_mapping``; every error is one
line naming the file and the key, and every allowed value comes from its one declaration."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import pytest

from hashcondense.condense import CONDENSERS, Budget
from hashcondense.experiments import load_experiment, parse_experiment
from hashcondense.experiments.grid import (
    PROFILES,
    PROTOCOLS,
    CondenserSpec,
    Experiment,
    JudgeSpec,
    from_mapping,
)
from hashcondense.hashing import HASH_METHODS
from hashcondense.recipes import RECIPES
from hashcondense.settings import COMPILES, PRECISIONS

BASE = {"datasets": {"cifar10": {"ipcs": [1]}}, "condensers": ["dm"]}


def error(grid: dict, profile: str = "paper") -> str:
    with pytest.raises(ValueError) as err:
        parse_experiment({"grid": grid}, profile, "mine.yaml")
    message = str(err.value)
    assert message.startswith("mine.yaml: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("grid, where, key", [
    ({**BASE, "bitz": [1]}, "", "bitz"),
    ({**BASE, "datasets": {"cifar10": {"ipcs": [1], "res": 32}}}, "datasets.cifar10: ", "res"),
    ({**BASE, "condensers": [{"iem-x": {"method": "iem", "option": {}}}]},
     "condensers.iem-x: ", "option"),
    ({**BASE, "budgets": {"dm": {"iters": 3}}}, "budgets.dm: ", "iters"),
    ({**BASE, "judge": {"recipe": "cpu", "stpes": 3}}, "judge: ", "stpes"),
])
def test_unknown_keys_are_refused_at_every_level_naming_key_and_known_keys(grid, where, key):
    message = error(grid)
    assert f"mine.yaml: {where}unknown key(s) ['{key}']; known: " in message
    known = message.split("known: ")[1].split(", ")
    assert key not in known and len(known) >= 2


def test_a_condenser_option_typo_fails_at_read_naming_the_condenser_and_options():
    message = error({**BASE, "condensers": [
        {"iem-x": {"method": "iem", "options": {"network_agu": False}}}]})
    assert message.startswith("mine.yaml: condensers.iem-x.options: ")
    assert "network_agu" in message
    message = error({**BASE, "condensers": [
        {"iem-x": {"method": "iem", "options": {"matching": {"btach_real": 8}}}}]})
    assert message.startswith("mine.yaml: condensers.iem-x.options: ") and "btach_real" in message
    message = error({**BASE, "condensers": [{"iem-x": {"method": "iem",
                                                       "options": {"perturb": {"mode": "x"}}}}]})
    assert message.startswith("mine.yaml: condensers.iem-x.options: ") and "filter" in message


@pytest.mark.parametrize("grid, where, allowed", [
    ({**BASE, "precision": "fp16"}, "precision", PRECISIONS),
    ({**BASE, "compile": "sometimes"}, "compile", COMPILES),
    ({**BASE, "protocol": "holdout"}, "protocol", PROTOCOLS),
    ({**BASE, "judge": {"recipe": "gpu"}}, "judge.recipe", tuple(RECIPES)),
    ({**BASE, "hash_methods": ["dhdd"]}, "hash_methods", tuple(HASH_METHODS.names())),
    ({**BASE, "condensers": ["dmm"]}, "condensers.dmm.method", (*CONDENSERS.names(), "whole")),
])
def test_bad_values_name_the_allowed_set_from_its_one_declaration(grid, where, allowed):
    message = error(grid)
    assert message.startswith(f"mine.yaml: {where}: ")
    assert ", ".join(allowed) in message


def test_profiles_are_the_recipes_and_an_unknown_one_names_them():
    assert set(PROFILES) == set(RECIPES)
    with pytest.raises(ValueError, match=re.escape(", ".join(PROFILES))):
        parse_experiment({"grid": BASE}, "laptop")
    with pytest.raises(ValueError, match="profiles must be a mapping with keys among"):
        parse_experiment({"grid": BASE, "profiles": {"laptop": {}}}, "paper", "mine.yaml")


def test_numbers_have_one_spelling_and_lists_become_tuples():
    exp = parse_experiment({"grid": {**BASE, "seeds": 3, "budgets": {
        "dm": {"seconds": 300.0, "iterations": 20.0, "snapshots": [5, 2]}}}}, "paper")
    budget = exp.budget_for("dm")
    assert isinstance(budget, Budget)  # the condensers' own budget, with its checks
    assert repr(budget.seconds) == "300" and repr(budget.iterations) == "20"
    assert budget.snapshots == (2, 5) and exp.seeds == (3,)
    assert "iterations: must be an integer, got 2.5" in error(
        {**BASE, "budgets": {"dm": {"iterations": 2.5}}})
    assert "budget seconds must be positive" in error({**BASE, "budgets": {"dm": {"seconds": 0}}})
    assert "snapshots repeat" in error({**BASE, "budgets": {"dm": {"snapshots": [1, 1]}}})


def test_new_grid_keys_protocol_judge_batch_size_and_report(monkeypatch):
    exp = parse_experiment({"grid": {**BASE, "protocol": "validation",
                                     "judge": {"recipe": "cpu", "batch_size": 64.0}}}, "paper")
    assert exp.protocol == "validation" and exp.judge == JudgeSpec("cpu", batch_size=64)
    assert parse_experiment({"grid": BASE}, "paper").protocol == "test"
    assert "judge.batch_size: must be a positive int" in error(
        {**BASE, "judge": {"batch_size": 0}})

    from hashcondense.experiments.report import SECTIONS  # the names the report declares

    exp = parse_experiment({"grid": {**BASE, "report": ["table1", "cost"]}}, "paper")
    assert exp.report == ("table1", "cost") and asdict(exp)["report"] == ("table1", "cost")
    assert (f"report: unknown ['tabel']; choose from {', '.join(SECTIONS.names())}"
            in error({**BASE, "report": ["tabel"]}))
    assert "report: repeats a value" in error({**BASE, "report": ["cost", "cost"]})


def test_condenser_entries_are_names_or_single_key_mappings():
    exp = parse_experiment({"grid": {**BASE, "condensers": [
        "random", {"iem": None}, {"iem-na": {"method": "iem", "options": {
            "dataset_aug": False, "matching": {"dsa": {"strategy": "crop"}, "batch_real": 8}}}}]}},
        "paper")
    assert [(c.label, c.method) for c in exp.condensers] == [
        ("random", "random"), ("iem", "iem"), ("iem-na", "iem")]
    na = exp.condensers[2]
    assert na.option_dict() == {"dataset_aug": False,
                                "matching": {"batch_real": 8, "dsa": {"strategy": "crop"}}}
    built = na.build()
    assert built.matching.batch_real == 8 and not built.dataset_aug
    assert "an entry is a name or {name: {fields}}" in error(
        {**BASE, "condensers": [{"a": {}, "b": {}}]})
    assert "condensers: labels repeat" in error({**BASE, "condensers": ["dm", {"dm": {}}]})
    assert "condensers.whole.options: the whole train split takes no options" in error(
        {**BASE, "condensers": [{"whole": {"options": {"x": 1}}}]})


def test_specs_check_themselves_when_built_directly():
    with pytest.raises(ValueError, match="ipcs: must be integers >= 1"):
        from_mapping(Experiment, {"datasets": {"x": {"ipcs": [0]}}, "condensers": ["dm"]},
                     name="x", profile="paper", description="", metric="m")
    with pytest.raises(ValueError, match="method: unknown condenser 'nope'"):
        CondenserSpec("nope")
    with pytest.raises(ValueError, match="recipe: must be one of"):
        JudgeSpec("gpu")


@dataclass(frozen=True)
class Inner:
    n: int
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    inner: Inner
    pairs: tuple[tuple[str, Inner], ...] = ()
    scale: float | None = None


def test_from_mapping_is_generic_over_spec_dataclasses():
    out = from_mapping(Outer, {"inner": {"n": 2.0, "tags": ["a", "b"]},
                               "pairs": {"x": {"n": 1}}, "scale": 3.0}, "outer")
    assert out == Outer(Inner(2, ("a", "b")), (("x", Inner(1)),), 3)
    with pytest.raises(ValueError,
                       match=r"^outer.pairs.x: unknown key\(s\) \['m'\]; known: n, tags"):
        from_mapping(Outer, {"inner": {"n": 1}, "pairs": {"x": {"m": 1}}}, "outer")
    with pytest.raises(ValueError, match=r"^outer.inner: needs n"):
        from_mapping(Outer, {"inner": {}}, "outer")
    with pytest.raises(ValueError, match=r"^outer.inner.tags: must be a string, got 3"):
        from_mapping(Outer, {"inner": {"n": 1, "tags": [3]}}, "outer")


def test_a_grid_file_error_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("grid:\n  datasets: {cifar10: {ipcs: [1]}}\n  condensers:\n"
                    "    - iem-x: {method: iem, options: {factr: 2}}\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: condensers.iem-x.options: "):
        load_experiment(path, "paper")


def test_variants_override_the_grid_and_each_runs_into_its_own_folder(tmp_path, capsys):
    import yaml

    from hashcondense.cli import main
    from hashcondense.experiments.grid import load_experiment, load_experiments

    doc = {"name": "study", "grid": {"datasets": {"digits": {"ipcs": [1]}},
                                     "condensers": ["random"], "judge": {"recipe": "cpu"}},
           "variants": {"a": {"precision": "bf16"},
                        "b": {"precision": "fp32", "judge": {"recipe": "cpu", "steps": 7}}},
           "profiles": {"smoke": {"judge": {"recipe": "smoke"}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    a, b = load_experiments(path, "cpu")
    assert (a.variant, a.precision, a.judge.steps) == ("a", "bf16", None)
    assert (b.variant, b.precision, b.judge.steps) == ("b", "fp32", 7)
    smoke_b = load_experiment(path, "smoke", "b")  # the profile is applied last
    assert (smoke_b.precision, smoke_b.judge.recipe) == ("fp32", "smoke")
    with pytest.raises(ValueError, match=r"study\.yaml: names variants \['a', 'b'\]"):
        load_experiment(path, "cpu")
    with pytest.raises(ValueError, match="has no variant 'c'"):
        load_experiment(path, "cpu", "c")
    out = tmp_path / "out"
    assert main(["bench", str(path), "--profile", "smoke", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"study/smoke/a: 0/1 cells done in {out / 'a'}" in printed
    assert f"study/smoke/b: 0/1 cells done in {out / 'b'}" in printed
