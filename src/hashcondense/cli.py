"""Command line: a thin layer over the importable API. Only this module prints.

Heavy imports (torch and friends) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .serve.cli import add_search_commands
from .settings import COMPILES, DSA_MODES, PRECISIONS, PROFILES

TRAIN_DEFAULTS_HELP = ("defaults: the --profile's judge recipe (recipes.py), the one the README's "
                      "tables use; these flags override single values")
COMPILE_HELP = ("torch.compile the networks: auto (default) where a backend can run; costs "
                "~20 s per graph once, then 2-4x faster steps on CPU")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="cifar10",
                   help="a built-in protocol (cifar10, imagenet10, imagenet20, digits), or your "
                   "own images: a folder, .zip, manifest (.csv/.jsonl) or protocol .yaml path")
    p.add_argument("--protocol", default=None, metavar="FILE.yaml",
                   help="a protocol file (source path + split rule); replaces --dataset")
    p.add_argument("--data-root", default=None,
                   help="folder holding the built-in datasets (else $HASHCONDENSE_DATA)")
    p.add_argument("--resolution", type=int, default=None,
                   help="image side in pixels (default: from the source, stated in the log)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the query/train/db split")
    g = p.add_argument_group("split rule (your own images; built-in protocols are fixed)")
    g.add_argument("--query-per-class", type=int, default=None,
                   help="queries per class (default min(100, n/10); layout train/test: "
                   "min(100, test images))")
    g.add_argument("--train-per-class", type=int, default=None,
                   help="training images per class (default min(500, half the rest))")
    g.add_argument("--database", choices=("train+rest", "rest"), default=None,
                   help="what is searched: every non-query image (default) or the rest only")
    g.add_argument("--min-per-class", type=int, default=None,
                   help="drop classes with fewer images (a warning lists them)")
    g.add_argument("--topk", type=int, default=None,
                   help="mAP cut-off (default 1000, or the database size when smaller)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images (listed in skipped_images.txt) instead of failing")


def _data_kwargs(args: argparse.Namespace) -> dict:
    """--dataset/--protocol and the split-rule flags as api keyword arguments."""
    options = {k: getattr(args, k) for k in ("query_per_class", "train_per_class", "database",
                                             "min_per_class", "topk")
               if getattr(args, k) is not None}
    return {"dataset": args.protocol or args.dataset, "data_root": args.data_root,
            "resolution": args.resolution, "split_seed": args.split_seed,
            "split_options": options, "skip_bad_images": args.skip_bad_images}


def _add_profile_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help=f"{what}: cpu (the calibrated 2-core recipe of the README's tables; "
                   "default without a GPU), paper (the paper's; default with CUDA), smoke "
                   "(seconds, proves the pipeline)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training", TRAIN_DEFAULTS_HELP)
    _add_profile_arg(g, "training recipe")
    g.add_argument("--hash-method", default="dhd")
    g.add_argument("--backbone", default=None, help="convnet3 (default <= 32 px) or resnetap10")
    g.add_argument("--bits", type=int, default=32)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--min-steps", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--optimizer", choices=("adam", "sgd"), default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--cutmix", type=float, default=None, metavar="P",
                   help="CutMix on this share of batches (IDC evaluates with 0.5); default off")
    g.add_argument("--strong-augment", default=None, metavar="FAMILIES",
                   help="DSA families of the second view, e.g. color_crop_flip_scale_rotate "
                        "(IDC drops cutout under CutMix); default the recipe's")
    g.add_argument("--strong-augment-mode", choices=DSA_MODES, default=None,
                   help="how the second view composes its families: S one a batch, C as "
                        "IDC's evaluation (flip and colour always, one of the rest, cutout "
                        "last), M all in turn; default the recipe's")
    g.add_argument("--precision", choices=PRECISIONS, default=None)
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--compile", choices=COMPILES, default=None, help=COMPILE_HELP)
    g.add_argument("--seed", type=int, default=0)


def _train_config(args: argparse.Namespace, *, whole: bool):
    """The profile's judge recipe (the one the README's tables use), then explicit flags."""
    import dataclasses

    from .recipes import default_profile, training_recipe

    profile = args.profile or default_profile()
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "min_steps", "batch_size", "optimizer", "lr", "cutmix",
                  "strong_augment", "strong_augment_mode", "precision", "device", "compile")
        if getattr(args, k) is not None
    }
    return dataclasses.replace(training_recipe(profile, whole=whole), **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from . import api

    run = api.train_run(
        **_data_kwargs(args), subset=args.subset, ipc=args.ipc,
        synthetic=Path(args.synthetic) if args.synthetic else None,
        hash_method=args.hash_method, backbone=args.backbone, bits=args.bits,
        train_config=_train_config(args, whole=args.subset == "whole" and not args.synthetic),
        seed=args.seed, out=Path(args.out),
        evaluate=args.evaluate, progress=not args.quiet,
        checkpoints=api.train_checkpointing(Path(args.out), every=args.checkpoint_every,
                                            resume=args.resume),
    )
    print(f"trained in {run['train_seconds']:.1f}s; model and run.json written to {args.out}")
    if "metrics" in run:
        for name, value in run["metrics"].items():
            print(f"  {name:>18s}  {100 * value:6.2f}")
    return 0


def parse_options(pairs: list[str]) -> dict:
    """``--option matching.lr=25`` pairs → the nested mapping a grid's ``options:`` gives, so
    the CLI reaches every hyperparameter a grid does; values are YAML (25, true, null, [..])."""
    import yaml

    options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE, e.g. matching.lr=25")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--option {key}: {text!r} is not a YAML value") from None
        node = options
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--option {key}: {part!r} is given a value elsewhere")
        if parts[-1] in node:
            raise ValueError(f"--option {key} is given twice")
        node[parts[-1]] = value
    return options


def cmd_condense(args: argparse.Namespace) -> int:
    from . import api

    if args.factor is not None and args.factor < 1:
        raise ValueError(f"--factor must be >= 1, got {args.factor}")
    options = parse_options(args.option)
    for key, value in (("network_aug", args.network_aug), ("dataset_aug", args.dataset_aug),
                       ("factor", args.factor)):
        if value is not None:
            if key in options:
                raise ValueError(f"--option {key} repeats a flag; give it once")
            options[key] = value
    from .condense.driver import command_execution
    from .recipes import default_profile

    with command_execution(Path(args.out), resume=args.resume,
                           every=args.checkpoint_every) as execution:
        record = api.condense_run(
            **_data_kwargs(args), method=args.method, ipc=args.ipc, seed=args.seed,
            out=Path(args.out), iterations=args.iterations, seconds=args.seconds,
            profile=args.profile or default_profile(), options=options, compile=args.compile,
            progress=not args.quiet,
            execution=execution,
        )
    if "synthetic" not in record:  # ranks other than 0 of a torchrun job write nothing
        return 0
    print(f"condensed {record['dataset']} to {args.ipc} images/class with {args.method} in "
          f"{record['condense_seconds']:.1f}s")
    print(f"  synthetic set: {record['synthetic']}\n  preview:       {record['preview']}\n"
          f"  record:        {Path(args.out) / 'condense.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import api

    out = api.evaluate_run(Path(args.model), data_root=args.data_root, precision=args.precision
                           or "auto", compile=args.compile, progress=not args.quiet,
                           skip_bad_images=args.skip_bad_images)
    for name, value in out["metrics"].items():
        print(f"  {name:>18s}  {100 * value:6.2f}")
    print(f"metrics written to {Path(args.model) / 'metrics.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import api

    rows = api.demo(Path(args.out), seed=args.seed, progress=not args.quiet)
    print(f"{'training set':<20}{'images':>8}{'mAP@all':>10}{'P@H<=2':>9}{'condense s':>12}"
          f"{'train s':>9}")
    for r in rows:
        print(f"{r['training_set']:<20}{r['images']:>8}{100 * r['mAP@all']:>10.2f}"
              f"{100 * r['P@H<=2']:>9.2f}{r['condense_seconds']:>12.1f}{r['train_seconds']:>9.1f}")
    print(f"results written to {args.out}/results.jsonl and {args.out}/summary.md; "
          f"the condensed images: {args.out}/iem_preview.png")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .experiments import plan, run_experiment
    from .experiments.grid import (
        cap_condense_seconds,
        load_experiments,
        restrict_condensers,
        restrict_datasets,
        select_variants,
    )
    from .experiments.sharding import parse_shard
    from .recipes import default_profile

    experiments = load_experiments(args.experiment, args.profile or default_profile())
    if args.variants:
        experiments = select_variants(experiments, args.variants)
    shard = parse_shard(args.shard) if args.shard else None
    for exp in experiments:  # a grid with variants runs each into OUT/<variant>
        if args.datasets:
            exp = restrict_datasets(exp, args.datasets)
        if args.condensers:
            exp = restrict_condensers(exp, args.condensers)
        if args.max_condense_seconds is not None:
            exp = cap_condense_seconds(exp, args.max_condense_seconds)
        out = Path(args.out or f"outputs/experiments/{exp.name}-{exp.profile}")
        out = out / exp.variant if exp.variant else out
        title = f"{exp.name}/{exp.profile}" + (f"/{exp.variant}" if exp.variant else "")
        if args.dry_run:
            cells = plan(exp, out, data_root=args.data_root, cache_dir=args.cache_dir,
                         shard=shard)
            for cell, done in cells:
                print(f"{'done' if done else 'todo'}  {cell.key}  {cell.dataset.name} "
                      f"{cell.condenser.label} ipc={cell.ipc} seed={cell.seed} "
                      f"it={cell.iteration if cell.iteration is not None else 'final'} "
                      f"{cell.task} {cell.hash_method or ''} {cell.bits or ''}".rstrip())
            print(f"{title}: {sum(d for _, d in cells)}/{len(cells)} cells done in {out}")
            continue
        summary = run_experiment(exp, out, data_root=args.data_root,
                                 cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                                 progress=not args.quiet, shard=shard,
                                 partial=bool(args.datasets or args.condensers))
        print(f"{title}: ran {len(summary.ran)} cells, {len(summary.skipped)} already done; "
              f"results in {summary.results}")
        if shard is not None:
            print(f"shard {shard}: condensed {len(summary.condensed)} sets")
        if not args.no_report:
            from .experiments.report import write_report

            files = write_report(out)
            print(f"report: {files.get('markdown', out / 'report.md')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.report import document_is_current, update_document, write_report
    from .records import atomic_write_text

    if args.update:
        doc = Path(args.update)
        if not doc.is_file():
            raise FileNotFoundError(f"{doc}: no such document")
        if args.check:
            if document_is_current(doc):
                print(f"{doc} is current")
                return 0
            print(f"{doc} is not current: run hashcondense report --update {doc}")
            return 1
        text = update_document(doc)
        changed = text != doc.read_text(encoding="utf-8")
        if changed:
            atomic_write_text(doc, text)
        print(f"{doc}: {'regenerated' if changed else 'already current'}")
        return 0
    if args.results_dir is None:
        raise ValueError("give a results folder, or --update DOC.md")
    files = write_report(Path(args.results_dir), Path(args.out) if args.out else None)
    for name, path in files.items():
        print(f"  {name:>10s}  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashcondense",
        description="Dataset condensation for deep hashing retrieval (IEM and baselines).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a hashing network on a dataset's train split or subset")
    _add_data_args(p)
    _add_train_args(p)
    p.add_argument("--subset", choices=("whole", "random"), default="whole")
    p.add_argument("--synthetic", default=None,
                   help="train on a synthetic-set file written by 'hashcondense condense'")
    p.add_argument("--ipc", type=int, default=None, help="images per class (with --subset random)")
    p.add_argument("--out", required=True, help="output folder for the model and run.json")
    p.add_argument("--evaluate", action="store_true", help="also evaluate on the protocol")
    p.add_argument("--checkpoint-every", default=None, metavar="N|Ns|Nm|Nh",
                   help="save the training state in OUT/checkpoints every N epochs or every so "
                   "much wall time (10m)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in OUT/checkpoints (if it is this run's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("condense", help="condense a train split into a few images per class")
    _add_data_args(p)
    p.add_argument("--method", required=True, help="iem, dm, herding, random, dsa, idc")
    p.add_argument("--ipc", type=int, required=True, help="synthetic images per class")
    _add_profile_arg(p, "budget")
    p.add_argument("--iterations", type=int, default=None,
                   help="iteration budget (default: the --profile's; cpu: at most 200, paper: "
                   "the method's reference, e.g. IEM 200, DM 20,000)")
    p.add_argument("--seconds", type=float, default=None,
                   help="wall-clock budget (default: the --profile's; cpu: 300)")
    p.add_argument("--factor", type=int, default=None, help="IEM multi-formation factor f")
    p.add_argument("--no-network-aug", dest="network_aug", action="store_const", const=False,
                   default=None, help="IEM ablation: no weight perturbation")
    p.add_argument("--no-dataset-aug", dest="dataset_aug", action="store_const", const=False,
                   default=None, help="IEM ablation: no multi-formation")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any hyperparameter of the method, as a grid's options: name it "
                   "(dotted for nested configs) and give a YAML value, e.g. --option "
                   "matching.lr=25 --option perturb.alpha_max=0.05; repeatable")
    p.add_argument("--compile", choices=COMPILES, default="auto", help=COMPILE_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint-every", default=None, metavar="N|Ns|Nm|Nh",
                   help="save a checkpoint in OUT/checkpoints every N iterations or every so "
                   "much wall time (10m)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUT/checkpoints (if any)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_condense)

    p = sub.add_parser("evaluate", help="mAP and friends of a trained model, as JSON")
    p.add_argument("--model", required=True, help="folder written by 'hashcondense train'")
    p.add_argument("--data-root", default=None)
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--compile", choices=COMPILES, default="auto", help=COMPILE_HELP)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="as when the model was trained with it")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="IEM vs Random vs the whole set on scikit-learn's digits")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run (or resume) an experiment grid of the paper")
    p.add_argument("experiment", help="table1, ablation, efficiency, generalization, "
                   "classification, or a .yaml file")
    _add_profile_arg(p, "the grid's profile")
    p.add_argument("--out", default=None,
                   help="results folder (default outputs/experiments/EXPERIMENT-PROFILE)")
    p.add_argument("--cache-dir", default=None,
                   help="where condensed sets are kept and shared (default OUT/synthetic)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets (else $HASHCONDENSE_DATA)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="run only these datasets of the grid (e.g. cifar10)")
    p.add_argument("--condensers", nargs="+", default=None, metavar="LABEL",
                   help="run only these condensers of the grid (its labels), in this order: "
                   "a long grid fills its one store a condenser at a time")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="run only these variants of a grid file, in this order (default: all, "
                   "in the file's order)")
    p.add_argument("--max-condense-seconds", type=float, default=None,
                   help="stop every condensation after this many seconds (fits a grid into a "
                   "fixed slot; recorded in each cell's budget)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only worker I's share of the cells (by cell hash); N workers, "
                   "e.g. a Slurm array, fill one --out and share one --cache-dir")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are done")
    p.add_argument("--no-report", action="store_true", help="skip writing the report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="Markdown + HTML + PNG figures of an experiment's results")
    p.add_argument("results_dir", nargs="?", help="folder written by 'hashcondense bench'")
    p.add_argument("--out", default=None, help="where to write (default: RESULTS_DIR)")
    p.add_argument("--update", default=None, metavar="DOC.md",
                   help="instead, regenerate the '<!-- report: DIR sections=... -->' blocks of a "
                   "Markdown page from the stores (DIR relative to the current folder)")
    p.add_argument("--check", action="store_true",
                   help="with --update: write nothing; exit 1 when the page is not current")
    p.set_defaults(func=cmd_report)
    add_search_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .distributed import RankFailure  # torch-free module import: cheap

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"hashcondense {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RankFailure as e:  # a peer rank of a torchrun job died
        print(f"hashcondense {args.command}: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    logging.getLogger(__name__).info("%s took %.1fs", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
