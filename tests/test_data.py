"""Tests for hashcondense.data: readers, cache, protocols (tiny generated fixtures)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hashcondense import data
from hashcondense.data import (
    DataError,
    LabeledImages,
    RetrievalSplit,
    load_source,
    make_split,
    read_cifar10_python,
    read_image_folder,
    resolve_data_root,
    split_from_pools,
    split_per_class,
)
from hashcondense.data import cache as cache_mod
from hashcondense.data import protocols as protocols_mod

COLORS = {"apple": (255, 0, 0), "banana": (0, 255, 0), "cherry": (0, 0, 255)}


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Keep every test's cache in its own temp dir, never in ~/.cache."""
    monkeypatch.setenv("HASHCONDENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HASHCONDENSE_DATA", raising=False)


def write_tree(root: pathlib.Path, counts: dict[str, dict[str, int]], size: int = 8) -> None:
    """ImageFolder tree ``root/<split>/<class>/<i>.jpg``; each class a solid colour."""
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), COLORS.get(cls, (128, 128, 128))).save(
                    folder / f"{i:03d}.jpg", quality=95
                )


def zip_tree(tree: pathlib.Path, dest: pathlib.Path, prefix: str = "") -> pathlib.Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(tree.rglob("*")):
            rel = prefix + path.relative_to(tree).as_posix()
            zf.write(path, rel + ("/" if path.is_dir() else ""))
    return dest


SMALL = {
    "train": {"apple": 4, "banana": 3, "cherry": 5},
    "test": {"apple": 2, "banana": 2, "cherry": 2},
}


@pytest.fixture
def tree(tmp_path) -> pathlib.Path:
    root = tmp_path / "tree"
    write_tree(root, SMALL)
    return root


def fake_images(labels, classes, size=4, channels=3) -> LabeledImages:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    images = (torch.arange(len(labels)) % 256).to(torch.uint8)
    images = images.view(-1, 1, 1, 1).expand(-1, channels, size, size).contiguous()
    return LabeledImages(images, labels, tuple(classes))


# --------------------------------------------------------------------------- LabeledImages


def test_labeled_images_basics():
    ds = fake_images([0, 1, 1, 2, 2, 2], "abc", size=5)
    assert len(ds) == 6 and ds.resolution == 5 and ds.channels == 3
    assert ds.class_counts() == [1, 2, 3]
    sub = ds.subset(np.array([5, 0]))
    assert sub.labels.tolist() == [2, 0] and sub.images[0, 0, 0, 0] == 5
    assert ds.subset(torch.tensor([1])).labels.tolist() == [1]
    assert len(ds.subset([])) == 0


@pytest.mark.parametrize(
    "images, labels, classes",
    [
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",)),  # float images
        (torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ("a",)),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",)),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32), ("a",)),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a",)),  # range
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, -1]), ("a",)),
    ],
)
def test_labeled_images_validation(images, labels, classes):
    with pytest.raises(DataError):
        LabeledImages(images, labels, classes)


# --------------------------------------------------------------------------- ImageFolder


def test_read_image_folder_dir(tree):
    ds = read_image_folder(tree, "train")
    assert ds.classes == ("apple", "banana", "cherry")
    assert ds.images.shape == (12, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.class_counts() == [4, 3, 5]
    # class colour survived JPEG: apple red, cherry blue
    apple = ds.images[ds.labels == 0].float().mean(dim=(0, 2, 3))
    cherry = ds.images[ds.labels == 2].float().mean(dim=(0, 2, 3))
    assert apple[0] > 200 and apple[2] < 60 and cherry[2] > 200 and cherry[0] < 60
    assert read_image_folder(tree, "test").class_counts() == [2, 2, 2]


@pytest.mark.parametrize("prefix", ["", "mydata/"])
def test_read_image_folder_zip_matches_dir(tree, tmp_path, prefix):
    archive = zip_tree(tree, tmp_path / "d.zip", prefix)
    a, b = read_image_folder(tree, "train"), read_image_folder(archive, "train")
    assert a.classes == b.classes
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_zip_without_directory_entries(tree, tmp_path):
    archive = tmp_path / "nodirs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*.jpg")):
            zf.write(path, "top/" + path.relative_to(tree).as_posix())
    assert read_image_folder(archive, "test").class_counts() == [2, 2, 2]


def test_read_image_folder_resolution(tree):
    ds = read_image_folder(tree, "train", resolution=4)
    assert ds.images.shape == (12, 3, 4, 4)


def test_val_is_accepted_for_test(tmp_path):
    write_tree(tmp_path / "t", {"train": {"apple": 1}, "val": {"apple": 2}})
    assert len(read_image_folder(tmp_path / "t", "test")) == 2


def test_mixed_sizes_get_a_chosen_resolution(tmp_path):
    write_tree(tmp_path / "t", {"apple": {"apple": 1}, "banana": {"banana": 2}})
    Image.new("RGB", (6, 6)).save(tmp_path / "t" / "apple" / "apple" / "big.jpg")
    _, _, pools = data.load_collection(tmp_path / "t", cache=False)
    assert pools["pool"].images.shape == (4, 3, 8, 8)  # median shorter side 8 px, under 32
    _, _, pools = data.load_collection(tmp_path / "t", resolution=4, cache=False)
    assert pools["pool"].images.shape == (4, 3, 4, 4)


# --------------------------------------------------------------------------- errors


def test_corrupt_image_is_named(tree, tmp_path):
    (tree / "train" / "banana" / "001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"banana/001\.jpg.*--skip-bad-images") as err:
        read_image_folder(tree, "train")
    assert "\n" not in str(err.value)
    archive = zip_tree(tree, tmp_path / "bad.zip", "pre/")
    with pytest.raises(DataError, match=r"bad\.zip!/pre/train/banana/001\.jpg"):
        read_image_folder(archive, "train")


def test_empty_class_folder_is_named_by_the_split_rule(tree, tmp_path, caplog):
    (tree / "train" / "durian").mkdir()
    (tree / "test" / "durian").mkdir()
    assert read_image_folder(tree, "train").class_counts() == [4, 3, 5, 0]
    with pytest.raises(DataError, match=r"class 'durian' has 0 images.*--min-per-class"):
        make_split(str(tree))
    archive = zip_tree(tree, tmp_path / "e.zip")
    with pytest.raises(DataError, match=r"class 'durian' has 0 images"):
        make_split(str(archive))
    split = make_split(data.resolve_protocol(str(archive), min_per_class=1))
    assert split.classes == ("apple", "banana", "cherry")
    assert "durian (0)" in caplog.text
    assert sorted(set(split.train.labels.tolist())) == [0, 1, 2]


def test_missing_split(tmp_path):
    write_tree(tmp_path / "t", {"train": {"apple": 1}})
    with pytest.raises(DataError, match=r"found split folders \['train'\].*train/ with test/"):
        read_image_folder(tmp_path / "t", "test")


def test_archive_without_images(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/apple/readme.txt", "hello")
    with pytest.raises(DataError, match="no images found"):
        read_image_folder(archive, "train")
    (tmp_path / "notzip.zip").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot open archive"):
        read_image_folder(tmp_path / "notzip.zip", "train")


def test_unknown_name_and_missing_root(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_source("mnist", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'imagenet1k'.*folder, .zip"):
        make_split("imagenet1k", tmp_path)
    with pytest.raises(DataError, match="HASHCONDENSE_DATA"):
        resolve_data_root(None)
    with pytest.raises(DataError, match="--data-root"):
        resolve_data_root(tmp_path / "nope")
    with pytest.raises(DataError, match="cifar10.zip"):
        load_source("cifar10", tmp_path)


def test_resolve_data_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHCONDENSE_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path.resolve()
    assert resolve_data_root(tmp_path) == tmp_path.resolve()


def test_train_test_class_mismatch(tmp_path):
    write_tree(tmp_path / "root" / "cifar10", {"train": {"apple": 1}, "test": {"banana": 1}})
    with pytest.raises(DataError, match="class folders differ"):
        load_source("cifar10", tmp_path / "root")


# --------------------------------------------------------------------------- CIFAR python


def write_fake_cifar(directory: pathlib.Path, per_batch: int = 6, protocol: int = 2) -> None:
    """Fake cifar-10-batches-py: pixel value encodes (row, channel) for layout checks."""
    directory.mkdir(parents=True)
    names = [b"cat", b"dog", b"emu"]
    with open(directory / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, fh, protocol=protocol)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, fname in enumerate(files):
        rows = np.zeros((per_batch, 3072), dtype=np.uint8)
        for r in range(per_batch):
            for c in range(3):
                rows[r, c * 1024 : (c + 1) * 1024] = (b * per_batch + r) * 3 + c
        labels = [(b + r) % 3 for r in range(per_batch)]
        with open(directory / fname, "wb") as fh:
            pickle.dump({b"batch_label": b"x", b"data": rows, b"labels": labels}, fh,
                        protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_read_cifar10_python(tmp_path, protocol):
    write_fake_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    out = read_cifar10_python(tmp_path / "cifar-10-batches-py")
    train, test = out["train"], out["test"]
    assert train.classes == ("cat", "dog", "emu")
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    # channel-major rows: image 7 channel 2 is constant (7 * 3 + 2)
    assert torch.all(train.images[7, 2] == 23) and torch.all(train.images[7, 0] == 21)
    assert train.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    small = read_cifar10_python(tmp_path / "cifar-10-batches-py", resolution=8)
    assert small["train"].resolution == 8


class _Evil:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(directory)
    marker = tmp_path / "pwned"
    with open(directory / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError, match=r"refusing.*(posix|os)\.system"):
        read_cifar10_python(directory)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        with open(directory / "data_batch_3", "rb") as fh:
            data.RestrictedUnpickler(fh).load()


def test_load_source_cifar_python_layout(tmp_path):
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    out = load_source("cifar10", tmp_path)
    assert len(out["train"]) == 30 and len(out["test"]) == 6
    again = load_source("cifar10", tmp_path)  # from cache
    assert torch.equal(again["train"].images, out["train"].images)


# --------------------------------------------------------------------------- lookup


def test_lookup_order_and_globs(tree, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    zip_tree(tree, root / "imagenette2-160.zip", "imagenette2-160/")
    out = load_source("imagenette", root)
    assert out["train"].class_counts() == [4, 3, 5]
    path, kind = data.find_source("imagenette", root)
    assert path.name == "imagenette2-160.zip" and kind == "folder"
    # the canonical name wins over the glob
    zip_tree(tree, root / "imagenette-128.zip")
    assert data.find_source("imagenette", root)[0].name == "imagenette-128.zip"
    # an extracted folder is found too
    write_tree(root / "imagewoof2" / "imagewoof2", SMALL)
    assert data.find_source("imagewoof", root)[0].name == "imagewoof2"
    assert len(load_source("imagewoof", root)["test"]) == 6


# --------------------------------------------------------------------------- cache


@pytest.fixture
def counting_reader(monkeypatch):
    """Counts decodes (cache misses) of collections."""
    calls = []
    original = cache_mod._build

    def spy(coll, resolution, *args, **kwargs):
        calls.append((str(coll.path), resolution))
        return original(coll, resolution, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "_build", spy)
    return calls


def _cifar_zip_root(tree: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    zip_tree(tree, root / "cifar10.zip")
    return root


def _entry_files() -> list[str]:
    return sorted(p.name for p in cache_mod.cache_dir().iterdir() if not p.name.endswith(".lock"))


def test_cache_hit_and_no_temp_files(tree, tmp_path, counting_reader):
    root = _cifar_zip_root(tree, tmp_path)
    first = load_source("cifar10", root)
    assert len(counting_reader) == 1  # both splits in one entry
    second = load_source("cifar10", root)
    assert len(counting_reader) == 1
    assert torch.equal(first["train"].images, second["train"].images)
    assert second["train"].classes == first["train"].classes
    assert second["test"].sources[0].endswith("cifar10.zip!/test/apple/000.jpg")
    files = _entry_files()
    assert len(files) == 3 and not [f for f in files if ".tmp" in f]
    # the images are a memory map of the entry, not a copy
    _, decoded, _ = data.load_collection(root / "cifar10.zip")
    assert isinstance(decoded.images, np.memmap) and len(counting_reader) == 1
    # a different resolution is a different entry
    load_source("cifar10", root, resolution=4)
    assert len(counting_reader) == 2
    # cache=False neither reads nor writes an entry
    load_source("cifar10", root, cache=False)
    assert len(counting_reader) == 3
    assert len(_entry_files()) == 6


def test_corrupt_cache_entry_is_rebuilt(tree, tmp_path, counting_reader):
    root = _cifar_zip_root(tree, tmp_path)
    reference = {k: v.images.clone() for k, v in load_source("cifar10", root).items()}
    for p in cache_mod.cache_dir().glob("*.npy"):  # in place: live maps see it (ours never do)
        p.write_bytes(b"\x00garbage")
    rebuilt = load_source("cifar10", root)
    assert len(counting_reader) == 2
    assert torch.equal(rebuilt["train"].images, reference["train"])
    load_source("cifar10", root)
    assert len(counting_reader) == 2  # the rebuilt entry is good again
    for p in cache_mod.cache_dir().glob("*.json"):
        p.write_text("{not json")
    load_source("cifar10", root)
    assert len(counting_reader) == 3
    # a truncated image file (a crash mid-copy by some other tool) is rebuilt, not misread
    for p in cache_mod.cache_dir().glob("*[0-9a-f].npy"):
        p.write_bytes(p.read_bytes()[:-10])
    assert torch.equal(load_source("cifar10", root)["train"].images, reference["train"])
    assert len(counting_reader) == 4


def test_cache_key_tracks_file_changes(tree, tmp_path, counting_reader):
    root = _cifar_zip_root(tree, tmp_path)
    load_source("cifar10", root)
    archive = root / "cifar10.zip"
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    load_source("cifar10", root)
    assert len(counting_reader) == 2  # mtime changed: decoded again
    write_tree(tree, {"train": {"apple": 6}})  # more images, new size
    zip_tree(tree, archive)
    out = load_source("cifar10", root)
    assert len(counting_reader) == 3 and out["train"].class_counts() == [6, 3, 5]


def test_cache_key_tracks_directory_changes(tree, tmp_path, counting_reader):
    root = tmp_path / "root"
    root.mkdir()
    tree.rename(root / "cifar10")
    load_source("cifar10", root)
    load_source("cifar10", root)
    assert len(counting_reader) == 1
    write_tree(root / "cifar10", {"test": {"apple": 3}})
    assert load_source("cifar10", root)["test"].class_counts() == [3, 2, 2]
    assert len(counting_reader) == 2


def test_unwritable_cache_is_not_fatal(monkeypatch, tree, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("HASHCONDENSE_CACHE", str(blocker))  # a file, so mkdir fails
    out = load_source("cifar10", _cifar_zip_root(tree, tmp_path))
    assert out["train"].class_counts() == [4, 3, 5]


# --------------------------------------------------------------------------- protocols


def test_split_per_class_sizes_and_disjointness():
    labels = np.repeat(np.arange(4), [10, 12, 9, 15])
    q, t, d = split_per_class(labels, (2, 3, None), np.random.default_rng(0))
    assert len(q) == 8 and len(t) == 12 and len(d) == 46 - 20
    assert not (set(q) & set(t)) and not (set(q) & set(d)) and not (set(t) & set(d))
    assert sorted(np.concatenate([q, t, d]).tolist()) == list(range(46))
    assert np.bincount(labels[q]).tolist() == [2, 2, 2, 2]
    q2, _, _ = split_per_class(labels, (2, 3, None), np.random.default_rng(0))
    q3, _, _ = split_per_class(labels, (2, 3, None), np.random.default_rng(1))
    assert np.array_equal(q, q2) and not np.array_equal(q, q3)


def test_split_per_class_too_many():
    labels = np.repeat(np.arange(3), [10, 4, 10])
    with pytest.raises(DataError, match=r"class 'b' has 4 images.*2 query \+ 3 train = 5"):
        split_per_class(labels, (2, 3, None), np.random.default_rng(0), classes="abc",
                        part_names=("query", "train"))


def shrink_protocol(monkeypatch, name: str, query: int, train: int) -> None:
    """Make a built-in protocol fit tiny fixtures (same code path, smaller counts)."""
    spec = protocols_mod.BUILTIN_PROTOCOLS[name]
    rule = dataclasses.replace(spec.rule, query_per_class=query, train_per_class=train)
    monkeypatch.setitem(protocols_mod.BUILTIN_PROTOCOLS, name, dataclasses.replace(spec, rule=rule))


@pytest.fixture
def small_counts(monkeypatch):
    shrink_protocol(monkeypatch, "cifar10", 2, 3)
    shrink_protocol(monkeypatch, "imagenet10", 1, 2)
    shrink_protocol(monkeypatch, "imagenet20", 1, 2)


def test_cifar10_protocol_on_small_data(tree, tmp_path, small_counts):
    root = _cifar_zip_root(tree, tmp_path)
    split = make_split("cifar10", root, seed=3)
    pool_n = 12 + 6
    assert (len(split.query), len(split.train), len(split.database)) == (6, 9, pool_n - 15)
    # a 3-image database is under the 1,000 cut-off: mAP over all of it
    assert split.pools == {"pool": pool_n} and split.topk is None
    q, t, d = (set(a.tolist()) for a in (split.query_index, split.train_index,
                                          split.database_index))
    assert not (q & t) and not (q & d) and not (t & d) and len(q | t | d) == pool_n
    assert split.query.class_counts() == [2, 2, 2] and split.train.class_counts() == [3, 3, 3]
    # the subsets hold the pool's images at those indices
    pool = data.load_pools("cifar10", root).data["pool"]
    assert torch.equal(split.train.images, pool.images[torch.as_tensor(split.train_index)])
    assert torch.equal(split.database.labels, pool.labels[torch.as_tensor(split.database_index)])
    # determinism
    assert make_split("cifar10", root, seed=3).fingerprint() == split.fingerprint()
    assert make_split("cifar10", root, seed=4).fingerprint() != split.fingerprint()
    desc = split.describe()
    json.dumps(desc)
    assert desc["sizes"] == {"query": 6, "train": 9, "database": 3}
    assert desc["classes"] == ["apple", "banana", "cherry"] and desc["seed"] == 3


def test_protocol_needs_too_many(tree, tmp_path, monkeypatch):
    root = _cifar_zip_root(tree, tmp_path)
    shrink_protocol(monkeypatch, "cifar10", 2, 4)
    with pytest.raises(DataError, match=r"class 'banana' has 5 images.*= 6 per class"):
        make_split("cifar10", root)


def test_imagenet_protocols_on_small_data(tree, tmp_path, small_counts):
    root = tmp_path / "root"
    root.mkdir()
    zip_tree(tree, root / "imagenette-128.zip")
    woof = tmp_path / "woof"
    write_tree(woof, {"train": {"dingo": 3, "pug": 4}, "test": {"dingo": 2, "pug": 1}})
    zip_tree(woof, root / "imagewoof-128.zip", "imagewoof/")

    s10 = make_split("imagenet10", root, seed=0)
    assert (len(s10.query), len(s10.train), len(s10.database)) == (3, 6, 12)
    assert s10.index_pool == {"query": "test", "train": "train", "database": "train"}
    assert s10.database_index.tolist() == list(range(12))
    assert set(s10.train_index.tolist()) <= set(s10.database_index.tolist())
    test_split = load_source("imagenette", root)["test"]
    assert torch.equal(s10.query.images, test_split.images[torch.as_tensor(s10.query_index)])

    s20 = make_split("imagenet20", root, seed=0)
    assert s20.classes == ("apple", "banana", "cherry", "dingo", "pug")
    assert s20.pools == {"train": 12 + 7, "test": 6 + 3}
    assert s20.train.class_counts() == [2] * 5 and s20.query.class_counts() == [1] * 5
    assert len(s20.database) == 19 and s20.database.class_counts() == [4, 3, 5, 3, 4]


def test_digits_source_and_protocol():
    out = load_source("digits")
    train, test = out["train"], out["test"]
    assert len(train) + len(test) == 1797
    assert 0.73 < len(train) / 1797 < 0.77
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    assert train.classes == tuple(str(i) for i in range(10))
    assert torch.equal(load_source("digits")["test"].images, test.images)  # deterministic
    assert load_source("digits", resolution=16)["train"].resolution == 16

    split = make_split("digits", seed=0)
    assert (len(split.query), len(split.train), len(split.database)) == (200, 500, 1097)
    assert split.topk is None
    assert not set(split.query_index.tolist()) & set(split.database_index.tolist())


def test_save_indices_round_trip(tmp_path):
    split = make_split("digits", seed=5)
    path = tmp_path / "out" / "split.json"
    split.save_indices(path)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]
    saved = RetrievalSplit.indices_from_json(path)
    assert saved.seed == 5 and saved.fingerprint == split.fingerprint()
    replay = make_split("digits", seed=0, indices=path)  # the file's seed wins
    assert replay.seed == 5 and replay.fingerprint() == split.fingerprint()
    assert torch.equal(replay.train.images, split.train.images)
    payload = json.loads(path.read_text())
    assert payload["query_index"] == split.query_index.tolist()

    payload["train_index"][0], payload["database_index"][0] = (
        payload["database_index"][0], payload["train_index"][0])
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="fingerprint"):
        RetrievalSplit.indices_from_json(path)
    with pytest.raises(DataError, match="protocol 'digits'"):
        split_from_pools("cifar10", {"pool": split.train}, indices=saved)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_cifar(data_root, tmp_path_factory):
    """Decode the real cifar10 once for this module, cached in a temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HASHCONDENSE_CACHE", str(tmp_path_factory.mktemp("realcache")))
        try:
            yield data_root, load_source("cifar10", data_root)
        except DataError as exc:
            pytest.skip(f"real cifar10 not usable: {exc}")


@pytest.mark.realdata
def test_real_cifar10(real_cifar):
    _, out = real_cifar
    assert len(out["train"]) + len(out["test"]) == 60_000
    assert len(out["train"].classes) == 10 and out["train"].classes[0] == "airplane"
    counts = np.add(out["train"].class_counts(), out["test"].class_counts())
    assert counts.tolist() == [6000] * 10
    assert out["train"].images.shape[1:] == (3, 32, 32)


@pytest.mark.realdata
def test_real_cifar10_protocol(real_cifar):
    _, out = real_cifar
    pools = {"pool": data.concat_images([out["train"], out["test"]])}
    split = split_from_pools("cifar10", pools, seed=0)
    assert (len(split.query), len(split.train), len(split.database)) == (1000, 5000, 54000)
    assert split.train.class_counts() == [500] * 10
    assert split.query.class_counts() == [100] * 10
    assert split.fingerprint() == split_from_pools("cifar10", pools, seed=0).fingerprint()


def test_validation_split_never_touches_queries_or_training_images(tree, tmp_path,
                                                                    small_counts):
    root = tmp_path / "root"
    root.mkdir()
    zip_tree(tree, root / "imagenette-128.zip")
    split = make_split("imagenet10", root, seed=0)  # database includes the train images
    val = split.validation(query_per_class=1, database_size=None, seed=3)
    assert val.protocol == "imagenet10-validation"
    assert val.train is split.train
    q = set(val.query_index.tolist())
    assert not q & set(split.train_index.tolist())  # training images never become queries
    assert not q & set(val.database_index.tolist())
    assert q | set(val.database_index.tolist()) == set(split.database_index.tolist())
    assert sorted(val.query.labels.tolist()) == list(range(len(split.classes)))
    again = split.validation(query_per_class=1, database_size=None, seed=3)
    assert again.fingerprint() == val.fingerprint()
    with pytest.raises(DataError, match="non-training database images"):
        split.validation(query_per_class=10_000)


def test_validation_split_database_size_on_digits():
    split = make_split("digits", seed=0)
    val = split.validation(query_per_class=20, database_size=500, seed=0)
    assert (len(val.query), len(val.database)) == (200, 500)
    assert not set(val.query_index.tolist()) & set(split.query_index.tolist())
