"""The README's commands run as written from a clean clone: every `hashcondense` line parses
with the real CLI (so no flag in the README is stale), every command's --help works, and the
cheap ones — the demo and a smoke grid — run exactly as printed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from hashcondense.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    """Every `hashcondense ...` (or `torchrun ... -m hashcondense ...`) line of the README's
    bash blocks, continuations joined, comments and a trailing `&` dropped, as argv lists
    without the program name."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in " ".join(shlex.split(line, comments=True)).split(" && "):
                words = part.split()
                if words and words[-1] == "&":
                    words = words[:-1]
                if words[:1] == ["hashcondense"]:
                    commands.append(words[1:])
                elif words[:1] == ["torchrun"] and "hashcondense" in words:
                    commands.append(words[words.index("hashcondense") + 1:])
    return commands


def test_the_readme_shows_every_command_and_only_real_flags():
    commands = readme_commands()
    assert len(commands) >= 15
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # SystemExit (and a test failure) on a stale flag or command
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    shown = {argv[0] for argv in commands}
    assert {"demo", "condense", "train", "evaluate", "bench", "report", "index", "search",
            "serve"} <= shown, sorted(set(subcommands) - shown)


@pytest.mark.parametrize("argv", [[], ["index", "add"]] + [
    [name] for name in ("train", "condense", "evaluate", "demo", "bench", "report", "index",
                        "search", "serve")])
def test_help_of_every_command(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: hashcondense" in capsys.readouterr().out


def _the(command: str) -> list[str]:
    matches = [argv for argv in readme_commands() if argv[:len(command.split())] ==
               command.split()]
    assert matches, f"the README no longer shows `hashcondense {command}`"
    return matches[0]


def test_the_readme_demo_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    assert main(_the("demo")) == 0
    printed = capsys.readouterr().out
    assert "whole train split" in printed and "iem 2/class" in printed
    out = tmp_path / "runs" / "demo"
    for name in ("summary.md", "results.jsonl", "split.json", "iem_preview.png"):
        assert (out / name).is_file(), name  # the files the README promises
    from hashcondense.records import record_problems

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["condenser"] for r in records} == {"whole", "random", "iem"}
    assert all(record_problems(r) == [] for r in records)
    value = {(r["condenser"], r["metric"]): r["value"] for r in records}
    # the README's claim: IEM beats Random at the same 2 images per class, the whole split
    # beats both, and everything is far above chance (~0.1 for 10 balanced classes)
    assert value["random", "mAP@all"] > 0.3
    assert value["iem", "mAP@all"] > value["random", "mAP@all"] + 0.05
    assert value["whole", "mAP@all"] > value["iem", "mAP@all"]
    assert (out / "summary.md").read_text().count("|") > 15
    assert (out / "iem_preview.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "split.json").read_text())["protocol"] == "digits"


def test_the_readme_smoke_grid_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HASHCONDENSE_CACHE", str(tmp_path / "cache"))
    argv = _the("bench table1 --profile smoke")
    assert main(argv) == 0
    results = tmp_path / "outputs" / "experiments" / "table1-smoke"
    assert (results / "report.md").is_file()
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert {r["condenser"] for r in rows} >= {"whole", "random", "dm", "iem"}
    assert main(argv) == 0  # resumes: nothing left to run
    assert "ran 0 cells" in capsys.readouterr().out
