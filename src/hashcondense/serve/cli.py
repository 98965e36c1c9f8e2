"""The ``index``, ``search`` and ``serve`` commands (registered by ``hashcondense.cli``).

Kept here so the main CLI needs one call, :func:`add_search_commands`. Only this module (and
``hashcondense.cli``) prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..settings import PRECISIONS

DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_K = 100


def _params(args: argparse.Namespace) -> Any:
    from ..retrieval.index import IndexParams

    overrides = {k: getattr(args, k) for k in ("hnsw_m", "ivf_nlist", "ivf_nprobe", "mih_nflip")
                 if getattr(args, k, None) is not None}
    return IndexParams(**overrides)


def cmd_index(args: argparse.Namespace) -> int:
    from . import engine

    progress = not args.quiet
    if args.action == "add":
        if not args.index:
            raise ValueError("index add: --index INDEX_DIR is required")
        if args.out or args.kind != "auto":
            raise ValueError("index add: --out and --kind belong to building a new index")
        res = engine.add_run(index_dir=Path(args.index), dataset=args.dataset,
                             data_root=args.data_root, split=args.split,
                             split_seed=args.split_seed,
                             model_dir=Path(args.model) if args.model else None,
                             batch_size=args.batch_size, progress=progress)
        print(f"added {res['added']} images; {res['index']} now holds {res['count']}")
        return 0
    if not args.model or not args.out:
        raise ValueError("index: --model MODEL_DIR and --out INDEX_DIR are required")
    if args.index:
        raise ValueError("index: --index is for 'index add'; a new index goes to --out")
    res = engine.index_run(model_dir=Path(args.model), dataset=args.dataset, out=Path(args.out),
                           data_root=args.data_root, split=args.split,
                           split_seed=args.split_seed, kind=args.kind, params=_params(args),
                           precision=args.precision, batch_size=args.batch_size,
                           progress=progress)
    print(f"indexed {res['count']} images ({res['bits']} bits, {res['kind']}) in "
          f"{res['encode_seconds']:.1f}s + {res['build_seconds']:.1f}s → {res['index']}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from . import engine

    if args.k < 1:
        raise ValueError(f"-k: must be >= 1, got {args.k}")
    results = engine.search_run(index_dir=Path(args.index), images=[Path(p) for p in args.images],
                                k=args.k, model_dir=Path(args.model) if args.model else None)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for res in results:
        ms = res["latency_ms"]
        print(f"{res['query']['name']}  ({ms['total']:.1f} ms: encode {ms['encode']:.1f}, "
              f"search {ms['search']:.2f})")
        for r in res["results"]:
            label = r["class"] if r["class"] is not None else "-"
            print(f"  {r['rank']:>4d}  d={r['distance']:<3d} id={r['id']:<8d} {label:<12s} "
                  f"{r['source'] or ''}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import ServeConfig, create_app

    config = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_k=args.max_k, max_pixels=args.max_pixels)
    app = create_app(Path(args.index), config=config,
                     model_dir=Path(args.model) if args.model else None)
    print(f"serving {args.index} on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_search_commands(sub: Any) -> None:
    """Register ``index``, ``search`` and ``serve`` on the main parser's subparsers."""
    from . import DEFAULT_MAX_PIXELS

    p = sub.add_parser("index", help="encode a dataset split with a trained model into a "
                       "searchable binary-code index ('index add' appends)")
    p.add_argument("action", nargs="?", choices=("add",),
                   help="'add': append images to the existing --index")
    p.add_argument("--model", default=None, help="folder written by 'hashcondense train' "
                   "(index add: default the index's own model)")
    p.add_argument("--dataset", required=True,
                   help="a built-in protocol (cifar10, digits, …) or your own folder, .zip or "
                   "manifest")
    p.add_argument("--split", default=None, choices=("database", "query", "train"),
                   help="which split to index (default: the database; a collection without "
                   "splits, <class>/<image>, is indexed whole)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets (else $HASHCONDENSE_DATA)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the query/train/db split")
    p.add_argument("--out", default=None, help="output folder of a new index")
    p.add_argument("--index", default=None, help="existing index folder (index add)")
    p.add_argument("--kind", default="auto", choices=("auto", "exact", "hnsw", "ivf", "mih"),
                   help="faiss index: exact (IndexBinaryFlat) or approximate; auto = exact up "
                   "to 2M codes, ivf above")
    p.add_argument("--hnsw-m", type=int, default=None)
    p.add_argument("--ivf-nlist", type=int, default=None)
    p.add_argument("--ivf-nprobe", type=int, default=None)
    p.add_argument("--mih-nflip", type=int, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="encoding precision, reused for queries (fp32: batch-independent codes)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="rank an index's images by Hamming distance to images")
    p.add_argument("--index", required=True, help="folder written by 'hashcondense index'")
    p.add_argument("images", nargs="+", help="image files to search with")
    p.add_argument("-k", type=int, default=10, help="results per image (default 10)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--model", default=None, help="model folder if it moved since indexing")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="a local search page over an index")
    p.add_argument("--index", required=True, help="folder written by 'hashcondense index'")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine "
                   "only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--max-k", type=int, default=DEFAULT_MAX_K)
    p.add_argument("--model", default=None, help="model folder if it moved since indexing")
    p.set_defaults(func=cmd_serve)
