"""Result store identity and resumption; training recipes."""

import pytest

from hashcondense.experiments import ResultStore, config_hash
from hashcondense.experiments.store import canonical
from hashcondense.recipes import RECIPES, training_recipe


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"ipc": 10, "bits": 32, "nested": {"lr": 1.0, "f": 2}}
    b = {"nested": {"f": 2, "lr": 1.0}, "bits": 32, "ipc": 10}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "bits": 64})
    assert config_hash(a) != config_hash({**a, "nested": {"lr": 1.0, "f": 3}})
    assert len(config_hash(a)) == 16


def test_canonical_gives_one_quantity_one_spelling():
    assert canonical({"b": (300.0, 2.5), "a": {"lr": 1.0}}) == {"b": [300, 2.5],
                                                                 "a": {"lr": 1}}
    assert config_hash(canonical({"s": 300.0})) == config_hash(canonical({"s": 300}))
    assert repr(canonical(1.0)) == "1" and canonical(True) is True


def test_store_marks_cells_done_and_appends(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    assert store.done() == set() and store.rows() == []
    store.add("abc", [{"metric": "mAP@1000", "value": 0.5}, {"metric": "mAP@all", "value": 0.4}])
    store.add("def", [{"metric": "mAP@1000", "value": 0.6}])
    assert store.done() == {"abc", "def"}
    rows = ResultStore(tmp_path / "r.jsonl").rows()  # a fresh handle sees the same file
    assert [r["cell"] for r in rows] == ["abc", "abc", "def"]
    assert [r["value"] for r in rows] == [0.5, 0.4, 0.6]


@pytest.mark.parametrize("profile", sorted(RECIPES))
def test_subsets_get_a_step_budget_so_decoded_sets_cost_the_same(profile):
    """A multi-formation set decodes to f² more images; an epoch budget would give it f² more
    steps than a coreset of the same ipc. Every profile must budget subsets in steps."""
    import math

    subset = training_recipe(profile, whole=False)
    steps = [max(subset.epochs, math.ceil(subset.min_steps / math.ceil(n / subset.batch_size)))
             * math.ceil(n / subset.batch_size) for n in (10, 40, 100, 400)]
    assert max(steps) - min(steps) <= 2, steps
    assert training_recipe(profile, whole=True) != subset


def test_unknown_profile_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cpu.*paper"):
        training_recipe("gpu", whole=True)
