"""Your own images: every layout (a)-(d), odd files, split rules, the memory-mapped cache, and the
commands end to end on a generated folder and (when present) a real zip passed as a path."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hashcondense import data
from hashcondense.cli import main
from hashcondense.data import DataError, make_split, resolve_protocol
from hashcondense.data import cache as cache_mod

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHCONDENSE_CACHE", str(tmp_path / "cache"))


def solid(path: pathlib.Path, colour, size=(16, 16), mode="RGB", fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


def pool_tree(root: pathlib.Path, counts: dict[str, int], size=(16, 16)) -> pathlib.Path:
    """Layout (a): root/<class>/<i>.png, each class a solid colour."""
    for cls, n in counts.items():
        for i in range(n):
            solid(root / cls / f"{i:03d}.png", RGB.get(cls, (128, 128, 128)), size)
    return root


def zip_dir(src: pathlib.Path, dest: pathlib.Path, prefix: str = "") -> pathlib.Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return dest


def classes_by_colour(images: data.LabeledImages) -> dict[str, str]:
    """Which colour each class's images are, read from the decoded pixels (RGB order)."""
    out = {}
    for c, name in enumerate(images.classes):
        rows = images.images[images.labels == c]
        if len(rows):
            mean = rows.float().mean(dim=(0, 2, 3))
            out[name] = ("red", "green", "blue")[int(mean.argmax())]
    return out


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("as_zip", [False, True])
def test_layout_a_pool_with_default_rule(tmp_path, as_zip):
    root = pool_tree(tmp_path / "photos", {"red": 30, "green": 12, "blue": 3})
    src = zip_dir(root, tmp_path / "photos.zip", "photos/") if as_zip else root
    coll = data.open_collection(src)
    assert coll.layout == "pool" and coll.classes == ("blue", "green", "red")
    split = make_split(str(src), seed=1)
    assert split.protocol == "photos" and split.topk is None  # database under 1,000
    # defaults per class: queries min(100, max(1, n // 10)), train min(500, max(1, left // 2))
    assert split.query.class_counts() == [1, 1, 3]
    assert split.train.class_counts() == [1, 5, 13]
    q, t, d = (set(a.tolist()) for a in (split.query_index, split.train_index,
                                          split.database_index))
    assert not q & d and not q & t and t <= d and len(q | d) == 45  # database = train + rest
    assert classes_by_colour(split.train) == {"blue": "blue", "green": "green", "red": "red"}
    assert split.train.images.shape[1:] == (3, 16, 16)
    assert split.train.sources[0].startswith(str(src.resolve()))
    assert data.read_source_bytes(split.train.sources[0])[:4] == b"\x89PNG"
    again = make_split(str(src), seed=1)
    assert again.fingerprint() == split.fingerprint()
    assert make_split(str(src), seed=2).fingerprint() != split.fingerprint()


def test_layout_b_train_and_val(tmp_path):
    root = tmp_path / "b"
    pool_tree(root / "train", {"red": 8, "green": 6})
    pool_tree(root / "val", {"red": 3, "green": 2})
    split = make_split(resolve_protocol(str(root), train_per_class=4, query_per_class=2))
    assert data.open_collection(root).layout == "split"
    assert split.index_pool == {"query": "test", "train": "train", "database": "train"}
    assert split.query.class_counts() == [2, 2] and split.train.class_counts() == [4, 4]
    assert len(split.database) == 14  # the whole train split, as imagenet10
    assert all("/val/" in s for s in split.query.sources)
    rest = make_split(resolve_protocol(str(root), train_per_class=4, database="rest"))
    assert len(rest.database) == 6 and not set(rest.database_index) & set(rest.train_index)


def test_layout_c_given_parts(tmp_path):
    root = tmp_path / "c"
    pool_tree(root / "train", {"red": 2, "green": 2})
    pool_tree(root / "query", {"red": 1, "green": 1})
    pool_tree(root / "database", {"red": 4, "green": 3, "blue": 1})
    split = make_split(str(root))
    assert split.classes == ("blue", "green", "red")
    assert (len(split.query), len(split.train), len(split.database)) == (2, 4, 8)
    assert split.database.class_counts() == [1, 3, 4]
    with pytest.raises(DataError, match="query-per-class"):
        make_split(resolve_protocol(str(root), query_per_class=1))


def test_layout_d_manifests(tmp_path):
    pool_tree(tmp_path / "imgs", {"red": 6, "green": 6})
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    rows = [(f.relative_to(tmp_path).as_posix(), "1" if "red" in f.parts else "10") for f in files]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    split = make_split(str(csv_path))
    assert split.classes == ("1", "10")  # integer labels sort numerically
    assert classes_by_colour(split.train) == {"1": "red", "10": "green"}
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text("".join(json.dumps({"path": p, "label": lab,
                                         "split": "test" if i % 3 == 0 else "train"}) + "\n"
                             for i, (p, lab) in enumerate(rows)))
    assert data.open_collection(jsonl).layout == "split"
    given = tmp_path / "given.jsonl"
    given.write_text("".join(json.dumps({"path": p, "label": lab,
                                         "split": ("train", "query", "database")[i % 3]}) + "\n"
                             for i, (p, lab) in enumerate(rows)))
    assert len(make_split(str(given)).database) == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.png,a\n")
    with pytest.raises(DataError, match=r"bad\.csv.*'path' and 'label'"):
        make_split(str(bad))
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nimgs/nope.png,a\n")
    with pytest.raises(DataError, match=r"missing\.csv row 1.*nope\.png"):
        make_split(str(missing))


def test_junk_hidden_files_nested_images_and_unicode_classes(tmp_path):
    root = pool_tree(tmp_path / "j", {"café": 4, "猫": 4})
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "café" / "._000.png").write_bytes(b"apple double")
    (root / "café" / "notes.txt").write_text("not an image")
    solid(root / "__MACOSX" / "café" / "x.png", (1, 2, 3))
    solid(root / "猫" / "nested" / "deep.png", (0, 0, 255))
    coll = data.open_collection(root)
    assert coll.classes == ("café", "猫")
    assert len(coll.members["pool"]) == 9  # the nested image counts for its class
    archive = zip_dir(root, tmp_path / "j.zip")
    assert data.open_collection(archive).classes == ("café", "猫")
    assert len(make_split(str(archive)).train) == len(make_split(str(root)).train)


def test_unknown_layout_lists_what_was_found(tmp_path):
    pool_tree(tmp_path / "x" / "train", {"red": 2})
    pool_tree(tmp_path / "x" / "query", {"red": 2})
    with pytest.raises(DataError, match=r"'query', 'train'.*found folders: query, train"):
        make_split(str(tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        make_split(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not found"):
        make_split(str(tmp_path / "nope.zip"))


# --------------------------------------------------------------------------- odd images


def test_odd_images_decode_in_one_collection(tmp_path):
    root = tmp_path / "odd"
    solid(root / "a" / "gray.png", 128, mode="L")
    solid(root / "a" / "rgba.png", (255, 0, 0, 0), mode="RGBA")  # fully transparent red
    Image.new("P", (16, 16), 3).save(root / "a" / "pal.gif")
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(root / "a" / "deep.png")
    solid(root / "b" / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK")  # red in CMYK
    wide = Image.new("RGB", (60, 20), (0, 0, 255))
    wide.paste((0, 255, 0), (20, 0, 40, 20))  # green middle third
    wide.save(root / "b" / "wide.png")
    solid(root / "b" / "tiny.bmp", (0, 255, 0), size=(8, 8))
    solid(root / "b" / "huge.jpg", (0, 255, 0), size=(3000, 2000))
    solid(root / "b" / "w.webp", (0, 255, 0))
    solid(root / "b" / "t.tiff", (0, 255, 0))
    rotated = Image.new("RGB", (32, 16), (0, 0, 0))
    rotated.paste((255, 255, 255), (0, 0, 16, 16))  # white left half when upright
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    rotated.save(root / "b" / "exif.jpg", exif=exif.tobytes(), quality=95)
    _, decoded, pools = data.load_collection(root, resolution=16)
    img = dict(zip([s.rsplit("/", 1)[1] for s in pools["pool"].sources],
                   pools["pool"].images, strict=True))
    assert pools["pool"].images.shape == (11, 3, 16, 16)  # mixed colour: RGB
    assert img["gray.png"].unique().tolist() == [128]
    assert img["rgba.png"].unique().tolist() == [255]  # transparent over white
    assert img["deep.png"].unique().tolist() == [255]  # 16-bit scaled, not clipped
    r, g, b = img["cmyk.jpg"].float().mean(dim=(1, 2)).tolist()
    assert r > 200 and g < 60 and b < 60
    assert img["wide.png"][:, 8, 8].tolist() == [0, 255, 0]  # centre crop keeps the middle
    assert img["tiny.bmp"][1].min() == 255 and img["huge.jpg"][1].float().mean() > 250
    upright = img["exif.jpg"][0].float()  # orientation 6: the white half ends up on top
    assert upright[:6].mean() > 200 and upright[-6:].mean() < 50
    assert not decoded.skipped


def test_all_grayscale_collection_is_one_channel(tmp_path):
    for i, cls in enumerate(("x", "y")):
        for j in range(3):
            solid(tmp_path / "g" / cls / f"{j}.png", 60 * i + j, mode="L")
    Image.new("I;16", (16, 16), 256 * 200).save(tmp_path / "g" / "y" / "deep.png")
    _, _, pools = data.load_collection(tmp_path / "g")
    assert pools["pool"].images.shape == (7, 1, 16, 16)
    assert sorted(pools["pool"].images[:, 0, 0, 0].tolist()) == [0, 1, 2, 60, 61, 62, 200]


def test_bad_files_are_named_or_skipped(tmp_path):
    root = pool_tree(tmp_path / "bad", {"red": 5, "green": 5})
    good = (root / "red" / "000.png").read_bytes()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(root / "red" / "trunc.jpg")
    blob = (root / "red" / "trunc.jpg").read_bytes()
    (root / "red" / "trunc.jpg").write_bytes(blob[: len(blob) // 2])
    (root / "green" / "text.jpg").write_text("this is not a picture")
    with pytest.raises(DataError, match=r"cannot decode image .*(trunc|text)\.jpg.*1 more.*"
                                        r"--skip-bad-images") as err:
        make_split(str(root))
    assert "\n" not in str(err.value)
    split = make_split(str(root), skip_bad_images=True)
    assert sorted(pathlib.Path(s).name for s in split.skipped) == ["text.jpg", "trunc.jpg"]
    assert len(split.query) + len(split.database) == 10
    assert (root / "red" / "000.png").read_bytes() == good  # sources are never written


def _decode_in_process(path: str, cache: str, queue) -> None:
    os.environ["HASHCONDENSE_CACHE"] = cache
    _, decoded, _ = data.load_collection(path, progress=False)
    queue.put(np.asarray(decoded.images).sum().item())


def test_two_processes_decoding_at_once_leave_one_valid_cache(tmp_path):
    root = pool_tree(tmp_path / "race", {"red": 40, "green": 40, "blue": 40})
    cache = str(tmp_path / "shared-cache")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_decode_in_process, args=(str(root), cache, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    sums = [queue.get(timeout=5) for _ in procs]
    assert sums[0] == sums[1] and sums[0] > 0
    files = sorted(p.name for p in (pathlib.Path(cache) / "data").iterdir())
    assert len([f for f in files if f.endswith(".json")]) == 1
    assert not [f for f in files if ".tmp" in f]
    os.environ["HASHCONDENSE_CACHE"] = cache
    _, decoded, _ = data.load_collection(root)
    assert int(np.asarray(decoded.images).sum()) == sums[0]


def test_parallel_decode_matches_in_process(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "par"
    for c in ("a", "b"):
        for i in range(20):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    coll = data.open_collection(root)
    one = cache_mod.decode_collection(coll, 16, cache=False, workers=1, progress=False)
    monkeypatch.setattr(cache_mod, "PARALLEL_MIN", 1)
    monkeypatch.setattr(cache_mod, "CHUNK", 7)
    two = cache_mod.decode_collection(coll, 16, cache=False, workers=2, progress=False)
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images))
    assert np.array_equal(one.labels, two.labels) and one.sources == two.sources


# --------------------------------------------------------------------------- rules


def test_split_rule_errors_and_dropping(tmp_path, caplog):
    root = pool_tree(tmp_path / "r", {"red": 20, "green": 20, "blue": 3})
    with pytest.raises(DataError, match=r"class 'blue' has 3 images.*--min-per-class"):
        make_split(resolve_protocol(str(root), query_per_class=2, train_per_class=5))
    split = make_split(resolve_protocol(str(root), query_per_class=2, train_per_class=5,
                                        min_per_class=10))
    assert split.classes == ("green", "red") and "blue (3)" in caplog.text
    assert split.train.class_counts() == [5, 5]
    assert set(split.train.labels.tolist()) == {0, 1}
    assert classes_by_colour(split.query) == {"green": "green", "red": "red"}
    with pytest.raises(DataError, match="built-in protocol"):
        resolve_protocol("cifar10", query_per_class=3)
    with pytest.raises(DataError, match="train_per_class must be a positive"):
        resolve_protocol(str(root), train_per_class=0)


def test_protocol_file_and_replayed_split(tmp_path):
    root = pool_tree(tmp_path / "p", {"red": 20, "green": 20})
    rules = tmp_path / "rules.yaml"
    rules.write_text("name: mine\nsource: p\nquery_per_class: 3\ntrain_per_class: 4\n"
                     "database: rest\ntopk: 5\n")
    split = make_split(str(rules))
    assert split.protocol == "mine" and split.topk == 5
    assert (len(split.query), len(split.train), len(split.database)) == (6, 8, 26)
    # the rule is part of the fingerprint: another rule is another protocol
    other = make_split(resolve_protocol(str(rules), database="train+rest"))
    assert other.fingerprint() != split.fingerprint()
    split.save_indices(tmp_path / "split.json")
    replay = make_split(str(root), indices=tmp_path / "split.json")  # rule from the file
    assert replay.fingerprint() == split.fingerprint()
    assert torch.equal(replay.train.images, split.train.images)
    (tmp_path / "typo.yaml").write_text("source: p\nqueries: 3\n")
    with pytest.raises(DataError, match=r"typo\.yaml: unknown keys \['queries'\]"):
        make_split(str(tmp_path / "typo.yaml"))


def test_builtin_fingerprints_unchanged():
    """digits' split fingerprint from before the protocol spec (the committed results use it)."""
    split = make_split("digits", seed=0)
    assert split.fingerprint() == ("6c24cc6c22ffe21e15a682e9c32d3d0a"
                                   "5486f827774a4831dec2a81c189b81cc")


# --------------------------------------------------------------------------- end to end


def _e2e(dataset_args: list[str], out: pathlib.Path) -> dict:
    assert main(["condense", *dataset_args, "--method", "iem", "--ipc", "1",
                 "--iterations", "2", "--compile", "off", "--out", str(out / "iem"),
                 "--quiet"]) == 0
    assert main(["train", *dataset_args, "--synthetic", str(out / "iem" / "synthetic.json"),
                 "--epochs", "1", "--min-steps", "2", "--compile", "off",
                 "--out", str(out / "model"), "--quiet"]) == 0
    assert main(["evaluate", "--model", str(out / "model"), "--compile", "off",
                 "--quiet"]) == 0
    metrics = json.loads((out / "model" / "metrics.json").read_text())["metrics"]
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    return metrics


@pytest.mark.slow
def test_end_to_end_on_a_generated_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mine"
    for c, base in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):
            noise = rng.integers(-40, 40, (20, 20, 3))
            px = np.clip(np.array(base) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"class{c}" / f"{i}.png")
    metrics = _e2e(["--dataset", str(root), "--resolution", "16"], tmp_path / "out")
    assert "mAP@all" in metrics
    run = json.loads((tmp_path / "out" / "model" / "run.json").read_text())
    assert run["dataset"] == str(root.resolve()) and run["protocol"]["protocol"] == "mine"


@pytest.mark.slow
def test_bench_grid_runs_a_collection_path_relative_to_the_grid_file(tmp_path):
    from hashcondense.experiments import load_experiment, run_experiment

    pool_tree(tmp_path / "grids" / "photos", {"red": 12, "green": 12, "blue": 12})
    grid = tmp_path / "grids" / "mine.yaml"
    grid.write_text("name: mine\ngrid:\n  datasets: {photos: {ipcs: [1], resolution: 8}}\n"
                    "  condensers: [random]\n  bits: [16]\n  judge: {recipe: smoke}\n"
                    "  precision: fp32\n  compile: \"off\"\n")
    exp = load_experiment(grid, "paper")
    assert exp.datasets[0].name == str((tmp_path / "grids" / "photos").resolve())
    summary = run_experiment(exp, tmp_path / "out", progress=False)
    assert summary.ran
    rows = [json.loads(x) for x in summary.results.read_text().splitlines()]
    assert {r["dataset"] for r in rows} == {exp.datasets[0].name}
    bad = tmp_path / "grids" / "bad.yaml"
    bad.write_text(grid.read_text().replace("photos:", "nope:"))
    with pytest.raises(ValueError, match="datasets.nope: neither a built-in protocol"):
        load_experiment(bad, "paper")


def test_pooling_train_and_test_of_one_collection_copies_nothing(tmp_path):
    root = tmp_path / "b"
    pool_tree(root / "train", {"red": 4, "green": 4})
    pool_tree(root / "test", {"red": 2, "green": 2})
    from hashcondense.data.sources import concat_images

    _, decoded, pools = data.load_collection(root)
    both = concat_images([pools["train"], pools["test"]])
    assert both.images.data_ptr() == pools["train"].images.data_ptr()  # a view of the map
    assert torch.equal(both.images, torch.from_numpy(np.asarray(decoded.images)))
    other = concat_images([pools["test"], pools["train"]])  # not adjacent in that order: a copy
    assert other.images.data_ptr() != pools["test"].images.data_ptr()
    assert torch.equal(other.images[:4], pools["test"].images)


@pytest.mark.slow
def test_index_and_search_your_own_folder(tmp_path, capsys):
    """A collection without splits is indexed whole, with its files as sources: searching one of
    them finds it at distance 0 and its thumbnail comes from the file."""
    pytest.importorskip("faiss")
    from hashcondense.serve.engine import SearchEngine

    rng = np.random.default_rng(1)
    root = tmp_path / "mine"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(8):
            px = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)  # not square: centre crop
            Image.fromarray(px).save(root / f"c{c}" / f"{i}.png")
    model = tmp_path / "model"
    assert main(["train", "--dataset", str(root), "--resolution", "16", "--profile", "smoke",
                 "--compile", "off", "--out", str(model), "--quiet"]) == 0
    index = tmp_path / "index"
    assert main(["index", "--model", str(model), "--dataset", str(root), "--out", str(index),
                 "--quiet"]) == 0
    engine = SearchEngine(index)
    assert len(engine) == 24  # every image, not only the database split
    probe = root / "c1" / "3.png"
    capsys.readouterr()
    assert main(["search", "--index", str(index), str(probe), "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    hits = hits[0]["results"] if isinstance(hits, list) else hits["results"]
    zero = [h for h in hits if h["distance"] == 0]
    assert zero and any(h["source"] == str(probe.resolve()) for h in zero)
    png = engine.thumbnail(engine.index.sources.index(str(probe.resolve())))
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (20, 24)  # the file itself, not the 16-px pixels the model saw
