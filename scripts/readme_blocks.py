"""Rewrite the blocks of README.md that quote a run or the configuration, so they cannot drift (`make readme`).

A block is marked in the Markdown as

    <!-- BEGIN:name -->...<!-- END:name -->

(on one line or over several) and its content is replaced by what the generator `name` of BLOCKS writes: from
`conf/schedules.yaml` (the deployments), or from the latest finished run of the configuration the options name
(default: `make pipeline`'s, ML-100K, the embedding engine, LightGCN), found in `<cache_dir>/<data>/runs.jsonl`
(flows/history.py) and read from its stage manifests. A marker without a generator, a generator without a marker
and unbalanced markers are errors; `--check` writes nothing and exits 1 when a block would change.

    python -m scripts.readme_blocks [--check] [--data ml-100k --engine embedding --model lightgcn --set k=v]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

import yaml

from flows.history import previous_run
from flows.options import build_config
from flows.summary import chain_lines, evaluate_lines
from lagcl.errors import LagclError
from lagcl.stats import format_p
from tasks.base import REPO_ROOT, make_plan
from lagcl.meta import TEST_RECALL, VALID_RECALL, EvaluateMeta, meta_of, metric_key

MARKER = re.compile(r"<!-- (BEGIN|END):([a-z0-9-]+) -->")


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """`text` with the content of each marked block replaced by `blocks[name]`. A block whose markers sit on
    lines of their own gets its content on the lines between them; an inline block, inline."""
    out, pos, seen = [], 0, set()
    markers = list(MARKER.finditer(text))
    if len(markers) % 2:
        raise ValueError("unbalanced block markers: every <!-- BEGIN:name --> needs its <!-- END:name -->")
    for begin, end in zip(markers[::2], markers[1::2]):
        name = begin.group(2)
        if begin.group(1) != "BEGIN" or end.group(1) != "END" or end.group(2) != name:
            raise ValueError(f"block markers out of order at {begin.group(0)} ... {end.group(0)}")
        if name not in blocks:
            raise ValueError(f"block {name!r} has no generator (known: {', '.join(sorted(blocks))})")
        if name in seen:
            raise ValueError(f"block {name!r} is marked twice")
        seen.add(name)
        body = blocks[name].strip("\n")
        multiline = text[begin.end():begin.end() + 1] == "\n"
        out += [text[pos:begin.end()], f"\n{body}\n" if multiline else body]
        pos = end.start()
    missing = sorted(set(blocks) - seen)
    if missing:
        raise ValueError(f"no marked block for {', '.join(missing)}")
    return "".join(out) + text[pos:]


def deployments_block(schedules: Path) -> str:
    """The deployments of conf/schedules.yaml as README lists them: how many, each with its cron, paused ones
    named so."""
    entries = yaml.safe_load(schedules.read_text())["deployments"]
    items = [f"`{d['name']}` (`{d['cron']}`" + (", paused" if d.get("paused") else "") + ")" for d in entries]
    return f"{len(entries)} deployments, one per entry of `conf/schedules.yaml`: " + ", ".join(items)


class Run:
    """The finished run the blocks quote: its stage folders' manifest meta."""

    def __init__(self, folders: dict[str, str]):
        self.folders = folders
        self.meta = {stage: meta_of(path) for stage, path in folders.items()}

    def step(self, level: str) -> dict | None:
        rows = [r for r in self.meta["evaluate"].get("levels", []) if r["level"] == level]
        return rows[-1] if rows else None


def chain_block(run: Run) -> str:
    ev = run.meta["evaluate"]
    kept = [r["level"] for r in ev.get("levels", []) if r.get("kept") and r["level"] != "control"]
    verdict = f"keeps {' and '.join(kept)}" if kept else "keeps no level"
    summary = evaluate_lines(EvaluateMeta.of(ev), Path(run.folders["evaluate"]))
    return "\n".join([f"The default `make pipeline` (LightGCN, offline engine, ML-100K) {verdict}, and says why "
                      "(regenerated from a run by `make readme`):", "", "```",
                      *(line.rstrip() for line in (*summary, *chain_lines(ev))), "```"])


def precision_block(run: Run) -> str:
    c = run.meta["gcl"].get("data_check") or {}
    if not c:
        return "its augmented positives were not checked in the run README quotes (the data level was off)"
    return (f"its augmented positives are {c['engine_precision']:.2%} precise on the validation positives of "
            f"{c['users']:,} cold users against the control's {c['control_precision']:.2%} (ML-100K)")


def rank_block(run: Run) -> str:
    r = run.step("rank")
    if r is None or not r.get("trained"):
        return "the default run does not train the rank level"
    control = next(x for x in run.meta["evaluate"]["levels"] if x["level"] == "control")
    valid = (r[VALID_RECALL] - control[VALID_RECALL]) / control[VALID_RECALL]
    test = (r[TEST_RECALL] - control[TEST_RECALL]) / control[TEST_RECALL]
    return (f"the default run {'keeps' if r['kept'] else 'turns down'} the rank level (validation Recall@20 "
            f"{valid:+.1%}, p = {format_p(r.get(metric_key('valid', stat='p')))}; test {test:+.1%}, p = "
            f"{format_p(r.get(metric_key('test', stat='p')))})")


def dataset_block(run: Run) -> str:
    s = run.meta["prepare"]["stats"]
    return (f"On ML-100K, `prepare` gives {s['users']:,} users, {s['items']:,} items and {s['positives']:,} positive "
            f"interactions (ratings >= 4, iterative 5-core; RecBole's own filtering gives the same), "
            f"{s['negatives']:,} negatives, split {s['positives_train']:,} / {s['positives_valid']:,} / "
            f"{s['positives_test']:,} positives for train / valid / test.")


RUN_BLOCKS: dict[str, Callable[[Run], str]] = {"default-run": chain_block, "precision": precision_block,
                                               "rank-verdict": rank_block, "dataset": dataset_block}


def generate(run: Run | None, conf: Path) -> dict[str, str]:
    blocks = {"deployments": deployments_block(conf / "schedules.yaml")}
    if run is not None:
        blocks.update({name: make(run) for name, make in RUN_BLOCKS.items()})
    return blocks


def latest_run(data: str, engine: str, model: str, overrides: list[str]) -> Run:
    plan = make_plan(build_config(data, engine, model, None, None, overrides))
    entry = previous_run(plan)
    if entry is None or "evaluate" not in entry.get("folders", {}):
        raise LagclError(f"no finished run of this configuration in {plan.store.root}: run `make pipeline` first")
    return Run(entry["folders"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block would change")
    p.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--engine", default="embedding")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        run = latest_run(args.data, args.engine, args.model, args.overrides)
        text = args.readme.read_text()
        new = replace_blocks(text, generate(run, REPO_ROOT / "conf"))
    except (LagclError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{args.readme.name}: every block is up to date (run {run.folders['evaluate']})")
        return 0
    if args.check:
        print(f"{args.readme.name}: blocks differ from the run {run.folders['evaluate']}: run `make readme`")
        return 1
    args.readme.write_text(new)
    print(f"{args.readme.name}: blocks rewritten from the run {run.folders['evaluate']} and conf/schedules.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
