"""Index / search / serve on the digits protocol: the search path reproduces the judge's mAP,
the CLI refuses mismatched indexes with one-line errors, and the web API answers every bad
request with a 4xx instead of crashing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from search_fixtures import train_digits_model, write_png_index  # noqa: E402

from hashcondense.cli import main  # noqa: E402
from hashcondense.data import make_split  # noqa: E402
from hashcondense.evaluation import evaluate_model  # noqa: E402
from hashcondense.hashing.checkpoint import load_hashing_model  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402
from hashcondense.retrieval import mean_average_precision  # noqa: E402
from hashcondense.retrieval.index import CodeIndex  # noqa: E402
from hashcondense.serve.engine import SearchEngine, index_run  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    model = train_digits_model(root / "model")
    index_run(model_dir=model, dataset="digits", out=root / "index", progress=False)
    return {"root": root, "model": model, "index": root / "index"}


def ranked_list_ap(ranked_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """mAP of given ranked lists, written out the long way (DHD's AP@R)."""
    aps = []
    for row, label in zip(ranked_labels, query_labels, strict=True):
        hits, total = 0, 0.0
        for pos, lab in enumerate(row, 1):
            if lab == label:
                hits += 1
                total += hits / pos
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


def test_search_path_reproduces_the_judges_map(digits) -> None:
    engine = SearchEngine(digits["index"])
    split = make_split("digits", resolution=8)
    query_codes = engine.encoder.encode(split.query.images)
    db_bits = np.unpackbits(engine.index.codes, axis=1)[:, : engine.index.bits]
    q_labels, db_labels = split.query.labels.numpy(), split.database.labels.numpy()
    np.testing.assert_array_equal(engine.index.labels, db_labels)
    # The index holds exactly the judge's database codes (fp32 judge).
    model, meta = load_hashing_model(digits["model"])
    norm = Normalization(tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
    judged = evaluate_model(model, split, norm, precision="fp32")
    np.testing.assert_array_equal(db_bits, judged.db_codes.numpy() > 0)
    n_db = len(db_labels)
    for k in (1, 10, 100, n_db):
        hits = engine.index.search(query_codes, k)
        ours = ranked_list_ap(engine.index.labels[hits.ids], q_labels)
        reference = mean_average_precision(query_codes, db_bits, q_labels, db_labels,
                                           topk=None if k == n_db else k)
        assert ours == pytest.approx(reference, abs=1e-12), k
    assert ours == pytest.approx(judged.metrics["mAP@all"], abs=1e-12)


def test_search_by_file_and_by_id(digits, tmp_path) -> None:
    index_dir, paths = write_png_index(tmp_path, digits["model"], upscale=3)
    engine = SearchEngine(index_dir)
    for i in (0, 17, 39):
        res = engine.search_bytes(paths[i].read_bytes(), k=5, name=paths[i].name)
        assert res["results"][0]["distance"] == 0
        zero = [r["id"] for r in res["results"] if r["distance"] == 0]
        assert i in zero or len(zero) == 5
        assert res["latency_ms"]["total"] >= res["latency_ms"]["search"] >= 0
        by_id = engine.search_id(i, k=5)
        assert [r["id"] for r in by_id["results"]] == [r["id"] for r in res["results"]]
        label = engine.index.labels[i]
        expected = np.mean([r["label"] == label for r in by_id["results"]])
        assert by_id["precision_at_k"] == pytest.approx(expected)
    png = engine.thumbnail(3)
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (24, 24)


# ---------------------------------------------------------------------------------- CLI


def test_cli_index_add_search_and_refusals(digits, tmp_path, capsys) -> None:
    idx = tmp_path / "idx"
    assert main(["index", "--model", str(digits["model"]), "--dataset", "digits",
                 "--split", "query", "--out", str(idx), "--quiet"]) == 0
    assert main(["index", "add", "--index", str(idx), "--dataset", "digits", "--quiet"]) == 0
    index = CodeIndex.load(idx)
    whole = CodeIndex.load(digits["index"])
    assert len(index) == 200 + len(whole)
    np.testing.assert_array_equal(index.codes[200:], whole.codes)
    assert [b["split"] for b in index.info["batches"]] == ["query", "database"]

    _, paths = write_png_index(tmp_path / "png", digits["model"], per_class=1)
    capsys.readouterr()
    assert main(["search", "--index", str(idx), str(paths[0]), "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and len(out[0]["results"]) == 4
    assert [r["rank"] for r in out[0]["results"]] == [1, 2, 3, 4]

    # Another model's codes: a 16-bit model cannot add to or search a 32-bit index.
    other = train_digits_model(tmp_path / "other", bits=16, seed=1)
    assert main(["index", "add", "--index", str(idx), "--dataset", "digits",
                 "--model", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another or retrained model" in err and err.count("\n") == 0
    # The model retrained in place: the fingerprint no longer matches.
    moved = tmp_path / "moved_model"
    train_digits_model(moved, seed=2)
    meta = json.loads((idx / "index.json").read_text())
    meta["model"]["path"] = str(moved)
    (idx / "index.json").write_text(json.dumps(meta))
    assert main(["search", "--index", str(idx), str(paths[0])]) == 2
    assert "another or retrained model" in capsys.readouterr().err
    # Tampered tensors.
    tensors = next(idx.glob("tensors-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:-1])
    assert main(["search", "--index", str(idx), str(paths[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert "SHA-256" in err and err.count("\n") == 0
    assert main(["index", "--dataset", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- web API


@pytest.fixture(scope="module")
def client(digits, tmp_path_factory):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from hashcondense.serve.app import ServeConfig, create_app

    root = tmp_path_factory.mktemp("web")
    index_dir, paths = write_png_index(root, digits["model"], upscale=2)
    app = create_app(index_dir, config=ServeConfig(max_upload_bytes=20_000, max_k=25,
                                                   max_pixels=1_000_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        c.paths = paths
        yield c


def png_bytes(size: tuple[int, int], mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_page_is_self_contained(client) -> None:
    res = client.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    html = res.text
    assert "<script>" in html and "<style>" in html
    for external in ("http://", "https://", "<link", "src=\"//", "@import"):
        assert external not in html


def test_api_search_happy_paths(client) -> None:
    info = client.get("/api/info").json()
    assert info["count"] == 40 and info["bits"] == 32 and info["max_k"] == 25
    items = client.get("/api/browse?n=7").json()["items"]
    assert len(items) == 7 and len({i["id"] for i in items}) == 7
    res = client.get("/api/search", params={"id": 5, "k": 6}).json()
    assert res["k"] == 6 and res["results"][0]["distance"] == 0
    assert res["query"]["id"] == 5 and res["precision_at_k"] is not None
    path = client.paths[5]
    up = client.post("/api/search?k=6", files={"image": (path.name, path.read_bytes(),
                                                         "image/png")})
    assert up.status_code == 200, up.text
    assert [r["id"] for r in up.json()["results"]] == [r["id"] for r in res["results"]]
    raw = client.post("/api/search?k=6", content=path.read_bytes(),
                      headers={"content-type": "image/png"})
    assert raw.json()["results"] == up.json()["results"]
    assert client.get("/api/search", params={"id": 1, "k": 10_000}).json()["k"] == 25  # capped
    thumb = client.get("/api/thumb/5")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert thumb.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(("method", "url", "kwargs", "status", "message"), [
    ("get", "/api/search?id=40", {}, 404, "not in the index"),
    ("get", "/api/search?id=-1", {}, 404, "not in the index"),
    ("get", "/api/search?id=abc", {}, 400, "must be an integer"),
    ("get", "/api/search", {}, 400, "missing query parameter 'id'"),
    ("get", "/api/search?id=1&k=0", {}, 400, "k must be >= 1"),
    ("get", "/api/thumb/40", {}, 404, "not in the index"),
    ("get", "/api/thumb/999999999999999999999999", {}, 404, "not in the index"),
    ("get", "/api/thumb/-3", {}, 404, None),
    ("get", "/api/thumb/abc", {}, 404, None),
    ("get", "/api/thumb/../../etc/passwd", {}, 404, None),
    ("get", "/api/thumb/%2e%2e/%2e%2e/etc/passwd", {}, 404, None),
    ("get", "/api/thumb/..%2f..%2fetc%2fpasswd", {}, 404, None),
    ("get", "/api/thumb/1/../../../../etc/passwd", {}, 404, None),
    ("get", "/nowhere", {}, 404, None),
    ("post", "/api/search", {"content": b"not an image at all"}, 400, "not a readable image"),
    ("post", "/api/search", {"files": {"image": ("x.txt", b"hello", "text/plain")}}, 400,
     "not a readable image"),
    ("post", "/api/search", {"files": {"other": ("x.png", b"abc", "image/png")}}, 400,
     "field named 'image'"),
    ("post", "/api/search", {"content": b""}, 400, "empty upload"),
    ("post", "/api/search", {"content": b"\0" * 30_000}, 413, "over the limit"),
    ("post", "/api/search", {"files": {"image": ("big.bin", b"\0" * 30_000, "image/png")}},
     413, "over the limit"),
    ("post", "/api/search", {"content": png_bytes((2000, 2000))}, 400, "pixels is over"),
    ("post", "/api/search", {"content": png_bytes((8, 8))[:40]}, 400, "not a readable image"),
    ("put", "/api/search", {}, 405, None),
])
def test_api_bad_requests_answer_4xx(client, method, url, kwargs, status, message) -> None:
    res = getattr(client, method)(url, **kwargs)
    assert res.status_code == status, (url, res.status_code, res.text[:200])
    assert "root:" not in res.text
    if message is not None:
        assert message in res.json()["error"]
    # The server survives: a good request still works afterwards.
    assert client.get("/api/search?id=0&k=3").status_code == 200


def test_oversized_chunked_upload_is_cut_off(client) -> None:
    def chunks():
        for _ in range(100):
            yield b"\0" * 1000

    res = client.post("/api/search", content=chunks())
    assert res.status_code == 413
