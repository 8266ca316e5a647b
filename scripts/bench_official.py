"""Peer benchmark against the paper authors' released code (issue 25, `make bench-official`).

Our ML-100K split (the prepare stage), with our rank level's default groups (the groups stage of the default
offline `embedding` engine: `rank.groups_from: groups`; an entity the stage left ungrouped is a group of its own,
as lagcl.chain.levels.node_groups makes it), is exported to their file format, and over `--seeds` training seeds:

- THEIR XSimGCL (../shared/anchors/lagcl4rec-official) runs as a separate process from a temporary folder
  (scripts/official_runner.py applies the run-time changes it needs: CPU, stand-in imports, our files), twice:
  `released` (the group files keyed by int, as their load_group_info does, while their loader keeps ids as
  strings) and `intended` (the same dicts keyed by the id strings);
- OUR trainer (the gcl stage's own path: lagcl.chain.levels.fit_context + lagcl.chain.fit.fit_variant) with the preset of
  their settings, conf/model/xsimgcl-official.yaml (`--model`): the control (rank off), `rank.reading: paper`
  (our default reading) and `rank.reading: official`; and `official-one-group`, the official reading with every
  user and every item in one group: what their released code computes when no group key matches.

Reported per run: test Recall@20 / NDCG@20 at the best validation epoch (validation Recall@20, all users, our
evaluator: the test masks training and validation positives), the best validation epoch, and training seconds
per epoch (validation excluded; 1 torch thread each, `--threads`). For their code also their own number (their
`fast_evaluation`: 20% of the test users, training items masked, the best epoch chosen on that test sample),
our evaluator's test numbers at that epoch, and the instrumentation of the runner (hard negatives from the
positive's group, batches of one group). Their per-epoch embeddings are scored by our evaluator; items their
loader never saw (no training positive) score -inf.

    python -m scripts.bench_official [--seeds 2024,2025,2026] [--epochs 50] [--out cache/bench-official]
        [--runs theirs-released,theirs-intended,control,paper,official,official-one-group] [--set KEY=VALUE]

The Markdown table goes to stdout and to OUT/official.md, every number to OUT/official.json (`--from-json
OUT/official.json` prints its table again without running anything).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parent.parent
OFFICIAL = REPO.parent / "shared" / "anchors" / "lagcl4rec-official"
RUNNER = Path(__file__).resolve().parent / "official_runner.py"
THEIRS = ("theirs-released", "theirs-intended")
OURS = ("control", "paper", "official", "official-one-group")
RUNS = THEIRS + OURS
LABELS = {
    "theirs-released": "authors' code, as released (group keys int, ids str)",
    "theirs-intended": "authors' code, groups keyed as intended (str)",
    "control": "ours, control (rank off)",
    "paper": "ours, rank.reading=paper (our default)",
    "official": "ours, rank.reading=official",
    "official-one-group": "ours, rank.reading=official, one group (= as released)",
}
# the stages that make the split and the groups; the rest of the pipeline is off
ONLY_GROUPS = [f"pipeline.stages.{s}=false" for s in ("augment", "control", "gcl", "rerank", "evaluate")]


# --- the export: our split and groups in their file formats -------------------------------------------------
@dataclass(frozen=True)
class Split:
    """The prepare stage's tables and each node's group (our ids: contiguous ints; raw ids: the dataset's)."""

    interactions: pl.DataFrame  # user, item, sign, split, ...
    users: pl.DataFrame  # user, raw_id
    items: pl.DataFrame  # item, raw_id, title, categories
    user_group: torch.Tensor
    item_group: torch.Tensor
    groups_source: str

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height


def split_rows(split: Split, which: str) -> pl.DataFrame:
    """(user raw id, item raw id, weight) rows of `which`: train = training positives (weight 1) and dislikes
    (weight -1, our split keeps them in train); valid / test = that split's positives (weight 1)."""
    inter = split.interactions.filter(pl.col("split") == which)
    if which != "train":
        inter = inter.filter(pl.col("sign") > 0)
    return (inter.join(split.users.select("user", pl.col("raw_id").alias("u")), on="user")
            .join(split.items.select("item", pl.col("raw_id").alias("i")), on="item")
            .sort(["user", "item"])
            .select("u", "i", pl.when(pl.col("sign") > 0).then(1).otherwise(-1).alias("w")))


def write_interactions(path: Path, rows: pl.DataFrame) -> int:
    """`user<TAB>item<TAB>weight` lines (their train/test format); returns the number of lines."""
    with open(path, "w") as fh:
        for u, i, w in rows.iter_rows():
            fh.write(f"{u}\t{i}\t{w}\n")
    return rows.height


def write_groups(path: Path, raw_ids: list[str], group: torch.Tensor) -> int:
    """`id,group` lines (their item_group.txt / user_group.txt): every entity in exactly one group."""
    with open(path, "w") as fh:
        for rid, g in zip(raw_ids, group.tolist()):
            fh.write(f"{rid},{g}\n")
    return len(raw_ids)


def export(split: Split, folder: Path) -> dict[str, Path]:
    """train.txt, valid.txt, test.txt, user_group.txt, item_group.txt under `folder`, keyed by raw ids."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.txt" for name in ("train", "valid", "test")}
    for name, path in paths.items():
        write_interactions(path, split_rows(split, name))
    paths["user_group"] = folder / "user_group.txt"
    paths["item_group"] = folder / "item_group.txt"
    write_groups(paths["user_group"], split.users["raw_id"].to_list(), split.user_group)
    write_groups(paths["item_group"], split.items["raw_id"].to_list(), split.item_group)
    return paths


def their_conf(official: Path, paths: dict[str, Path], epochs: int) -> str:
    """Their XSimGCL.conf with our train/test files and `epochs` (their other settings as they are)."""
    out = []
    for line in (official / "XSimGCL.conf").read_text().splitlines():
        key = line.split("=", 1)[0]
        if key == "training.set":
            line = f"training.set={paths['train']}"
        elif key == "test.set":
            line = f"test.set={paths['test']}"
        elif key == "num.max.epoch":
            line = f"num.max.epoch={epochs}"
        out.append(line)
    return "\n".join(out) + "\n"


def load_split(cfg) -> Split:
    """The prepare, profiles and groups stages of this configuration (run or found in its cache folder), and
    each node's group as the gcl stage gives them to the rank level (lagcl.chain.levels.node_groups)."""
    from lagcl.chain.levels import Interactions, node_groups
    from tasks.base import make_plan
    from tasks.stages import STAGES

    plan = make_plan(cfg)
    for stage in plan.fingerprints:
        STAGES[stage].runner(plan)
    inter, users, items = (plan.input("prepare", t) for t in ("interactions", "users", "items"))
    groups = (plan.input("groups", "user_groups", optional=True), plan.input("groups", "item_groups", optional=True))
    ug, ig, source = node_groups(cfg, Interactions(inter, items, users.height), *groups)
    if source == "groups":
        source = f"groups stage, {cfg.engine.name} engine ({cfg.engine.model})"
    return Split(inter, users, items, ug, ig, source)


# --- their code -----------------------------------------------------------------------------------------------
def run_theirs(official: Path, paths: dict[str, Path], mode: str, seed: int, epochs: int, threads: int,
               logs: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """One run of their XSimGCL in a temporary folder; its result JSON and per-epoch embeddings."""
    with tempfile.TemporaryDirectory(prefix="lagcl-official-") as tmp:
        conf = Path(tmp) / "XSimGCL.conf"
        conf.write_text(their_conf(official, paths, epochs))
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(RUNNER), "--official", str(official), "--conf", str(conf), "--groups", mode,
               "--user-groups", str(paths["user_group"]), "--item-groups", str(paths["item_group"]),
               "--seed", str(seed), "--threads", str(threads), "--out", str(out)]
        log = logs / f"theirs-{mode}-{seed}.log"
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=tmp, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"their code ({mode}, seed {seed}) failed with exit code {proc.returncode}; see {log}")
        result = json.loads(out.read_text())
        emb = np.load(out.with_suffix(".npz"))
        result["batch_errors"] = sum("Error processing batch" in line for line in log.read_text().splitlines())
        return result, emb["user"], emb["item"]


def score_theirs(split: Split, result: dict, user_emb: np.ndarray, item_emb: np.ndarray) -> list[dict]:
    """Our valid/test Recall/NDCG@20 of every epoch's embeddings of their run (their ids mapped to ours)."""
    from lagcl.evaluate import evaluate
    from lagcl.measure import split_sets
    from lagcl.train_data import build_train_data

    data = build_train_data(split.interactions, split.n_users, split.n_items)
    uidx = dict(zip(split.users["raw_id"].to_list(), range(split.n_users)))
    iidx = dict(zip(split.items["raw_id"].to_list(), range(split.n_items)))
    u_rows = torch.tensor([uidx[u] for u in result["user_ids"]])
    i_rows = torch.tensor([iidx[i] for i in result["item_ids"]])
    unseen = torch.ones(split.n_items, dtype=torch.bool)
    unseen[i_rows] = False
    rows = []
    for e in range(user_emb.shape[0]):
        d = user_emb.shape[2]
        U = torch.zeros(split.n_users, d)
        I = torch.zeros(split.n_items, d)
        U[u_rows] = torch.from_numpy(user_emb[e])
        I[i_rows] = torch.from_numpy(item_emb[e])

        def score(users: torch.Tensor) -> torch.Tensor:
            s = U[users] @ I.T
            s[:, unseen] = -torch.inf
            return s

        row = {"epoch": e + 1}
        for name in ("valid", "test"):
            truth, exclude = split_sets(data, name)
            m = evaluate(score, truth, exclude, (20,))
            row[f"{name}_recall@20"], row[f"{name}_ndcg@20"] = m[("recall", 20)], m[("ndcg", 20)]
        rows.append(row)
    return rows


def best_valid(rows: list[dict]) -> dict:
    """The first epoch with the highest validation Recall@20 (our trainer's rule)."""
    return max(rows, key=lambda r: (r["valid_recall@20"], -r["epoch"]))


def theirs_row(split: Split, official: Path, paths: dict[str, Path], mode: str, seed: int, epochs: int,
               threads: int, logs: Path) -> dict:
    result, ue, ie = run_theirs(official, paths, mode, seed, epochs, threads, logs)
    per_epoch = score_theirs(split, result, ue, ie)
    best = best_valid(per_epoch)
    own = result["own_best"]
    at_own = per_epoch[own["epoch"] - 1]
    c = {k: sum(ep[k] for ep in result["counts"]) for k in result["counts"][0]}
    return {
        "run": f"theirs-{mode}", "seed": seed, "best_epoch": best["epoch"],
        "test_recall@20": best["test_recall@20"], "test_ndcg@20": best["test_ndcg@20"],
        "valid_recall@20": best["valid_recall@20"],
        "own_epoch": own["epoch"], "own_recall@20": own["recall@20"], "own_ndcg@20": own["ndcg@20"],
        "test_recall@20_at_own_epoch": at_own["test_recall@20"], "test_ndcg@20_at_own_epoch": at_own["test_ndcg@20"],
        "s_per_epoch": float(np.mean([ep["train_seconds"] for ep in result["epochs"]])),
        "hard_from_group": c["hard_in_pos_group"] / c["triplets"],
        "easy_in_group": c["easy_in_pos_group"] / c["triplets"],
        "cl_one_group": c["cl_one_group"] / max(c["cl_calls"], 1),
        "user_key_found": c["user_key_found"] / c["triplets"], "pos_key_found": c["pos_key_found"] / c["triplets"],
        "group_key_type": result["group_key_type"], "batch_errors": result["batch_errors"],
        "items_unseen_by_their_loader": split.n_items - len(result["item_ids"]),
        "per_epoch": per_epoch, "own_per_epoch": result["epochs"],
    }


# --- ours -----------------------------------------------------------------------------------------------------
def our_config(model: str, run: str, seed: int, epochs: int, threads: int, overrides: list[str]):
    from lagcl.config import load_config

    reading = {"control": [], "paper": ["rank.reading=paper"], "official": ["rank.reading=official"],
               "official-one-group": ["rank.reading=official"]}[run]
    return load_config(model=model, overrides=[f"train_seed={seed}", f"gcl.epochs={epochs}", f"gcl.patience={epochs}",
                                               f"gcl.num_threads={threads}", "gcl.device=cpu", *reading, *overrides])


def ours_row(split: Split, model: str, run: str, seed: int, epochs: int, threads: int, overrides: list[str]) -> dict:
    from lagcl.chain.fit import Variant, fit_variant
    from lagcl.chain.levels import Interactions, fit_context

    cfg = our_config(model, run, seed, epochs, threads, overrides)
    groups = None
    if run != "control":
        groups = (split.user_group, split.item_group)
        if run == "official-one-group":
            groups = (torch.zeros_like(split.user_group), torch.zeros_like(split.item_group))
    ctx = replace(fit_context(cfg, Interactions(split.interactions, split.items, split.n_users), None, groups),
                  progress=False)
    f = fit_variant(ctx, Variant(run, rank=run != "control"))
    ep = f.result.epochs
    row = {"run": run, "seed": seed, "best_epoch": f.result.best_epoch, "test_recall@20": f.value("test"),
           "test_ndcg@20": f.value("test", "ndcg"), "valid_recall@20": f.valid,
           "s_per_epoch": float(ep["train_seconds"].mean()), "reading": cfg.rank.reading if run != "control" else None}
    if run in ("paper", "official") and "hard" in ep.columns:
        # paper: the share of triplets whose negative shares the positive's group; official: the share of hard
        # negatives that came from the positive's group (one group: trivially all, not shown)
        row["hard_from_group"] = float(ep["hard"].mean())
    return row


# --- the table --------------------------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def fmt(values: list[float], digits: int = 4) -> str:
    if not values:
        return ""
    m, sd = mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def table(rows: list[dict], runs: list[str]) -> str:
    head = ("| run | test R@20 (best valid) | test N@20 (best valid) | best valid epoch | their own R@20 / N@20 "
            "(20% test users, best test epoch) | test R@20 at their epoch | s/epoch |\n"
            "|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for run in runs:
        rs = [r for r in rows if r["run"] == run]
        if not rs:
            continue
        col = lambda k: [r[k] for r in rs if r.get(k) is not None]  # noqa: E731
        own = (f"{fmt(col('own_recall@20'))} / {fmt(col('own_ndcg@20'))} (epoch {fmt(col('own_epoch'), 1)})"
               if col("own_recall@20") else "")
        lines.append(f"| {LABELS[run]} | {fmt(col('test_recall@20'))} | {fmt(col('test_ndcg@20'))} | "
                     f"{fmt(col('best_epoch'), 1)} | {own} | {fmt(col('test_recall@20_at_own_epoch'))} | "
                     f"{fmt(col('s_per_epoch'), 2)} |")
    inst = [r for r in rows if r["run"] in THEIRS or r.get("hard_from_group") is not None]
    if inst:
        lines += ["", "| run | hard negatives from the positive's group | easy negatives in it | "
                  "CL batches of one group | batch users / positives found in the group dicts |",
                  "|---|---:|---:|---:|---:|"]
        for run in runs:
            rs = [r for r in inst if r["run"] == run]
            if not rs:
                continue
            col = lambda k: [r[k] for r in rs if r.get(k) is not None]  # noqa: E731
            keys = (f"{fmt(col('user_key_found'), 3)} / {fmt(col('pos_key_found'), 3)}"
                    if col("user_key_found") else "")
            lines.append(f"| {LABELS[run]} | {fmt(col('hard_from_group'), 3)} | {fmt(col('easy_in_group'), 3)} | "
                         f"{fmt(col('cl_one_group'), 3)} | {keys} |")
    return "\n".join(lines)


# (their run, our run computing the same objective): as released no group key matches, which our official
# reading computes with one group for every user and item
PEERS = (("theirs-released", "official-one-group"), ("theirs-intended", "official"))


def peer_lines(rows: list[dict]) -> list[str]:
    """Each peer pair's difference of mean test Recall@20 / NDCG@20 (ours - theirs) with the standard error of
    that difference over seeds, and their seconds per epoch over ours."""
    out = []
    for theirs, ours in PEERS:
        a = [r for r in rows if r["run"] == theirs]
        b = [r for r in rows if r["run"] == ours]
        if not a or not b:
            continue
        parts = []
        for key, name in (("test_recall@20", "R@20"), ("test_ndcg@20", "N@20")):
            (ma, sa), (mb, sb) = mean_sd([r[key] for r in a]), mean_sd([r[key] for r in b])
            se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
            parts.append(f"{name} {mb - ma:+.4f} (standard error {se:.4f})")
        speed = mean_sd([r["s_per_epoch"] for r in a])[0] / mean_sd([r["s_per_epoch"] for r in b])[0]
        out.append(f"- {LABELS[ours]} vs {LABELS[theirs]}: {', '.join(parts)}; their epoch takes {speed:.1f}x ours")
    return out


def render(header: str, rows: list[dict], runs: list[str]) -> str:
    peers = peer_lines(rows)
    return header + "\n\n" + table(rows, runs) + ("\n\nOurs - theirs, same objective:\n" + "\n".join(peers)
                                                    if peers else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_official", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="2024,2025,2026", help="training seeds (the split stays the configuration's)")
    p.add_argument("--epochs", type=int, default=50, help="epochs of every run (their conf: 50)")
    p.add_argument("--out", type=Path, default=REPO / "cache" / "bench-official")
    p.add_argument("--runs", default=",".join(RUNS), help=f"of {', '.join(RUNS)}")
    p.add_argument("--model", default="xsimgcl-official", help="our preset (conf/model/<MODEL>.yaml)")
    p.add_argument("--official", type=Path, default=OFFICIAL, help="the folder of their code")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of our runs and of the split/groups (lagcl/config.py)")
    p.add_argument("--from-json", type=Path, metavar="OFFICIAL_JSON",
                   help="print the table of an earlier run's official.json; nothing runs")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        runs = [r for r in RUNS if any(row["run"] == r for row in saved["rows"])]
        print(render(saved.get("header", ""), saved["rows"], runs))
        return 0
    from lagcl.config import load_config

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}: choose from {', '.join(RUNS)}")
    if any(r in THEIRS for r in runs) and not (args.official / "XSimGCL.py").is_file():
        p.error(f"their code is not at {args.official} (--official)")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out = args.out.resolve()  # their code runs in a temporary folder
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    cfg = load_config(model=args.model, overrides=[*ONLY_GROUPS, *args.overrides])
    split = load_split(cfg)
    paths = export(split, args.out / "export")
    header = (f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, torch "
              f"{torch.__version__}, {args.threads} thread(s); ML-100K split seed {cfg.seed}, groups: "
              f"{split.groups_source}; {args.epochs} epochs; seeds {args.seeds}")
    print(header, flush=True)
    rows: list[dict] = []
    for seed in seeds:
        for run in runs:
            t0 = time.perf_counter()
            if run in THEIRS:
                row = theirs_row(split, args.official, paths, run.split("-")[1], seed, args.epochs, args.threads, logs)
            else:
                row = ours_row(split, args.model, run, seed, args.epochs, args.threads, args.overrides)
            row["wall_seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  {run} seed {seed}: test R@20 {row['test_recall@20']:.4f} N@20 {row['test_ndcg@20']:.4f} "
                  f"(best valid epoch {row['best_epoch']}), {row['s_per_epoch']:.2f} s/epoch, "
                  f"{row['wall_seconds']:.0f} s", flush=True)
    text = render(header, rows, runs)
    print("\n" + text, flush=True)
    (args.out / "official.md").write_text(text + "\n")
    (args.out / "official.json").write_text(json.dumps(
        {"header": header, "seeds": seeds, "epochs": args.epochs, "groups": split.groups_source, "rows": rows},
        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
