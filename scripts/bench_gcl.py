"""Per-epoch training seconds and peak memory of each backbone, on ML-100K and on a synthetic graph of
ML-1M size (6,040 users x 3,706 items, 1M interactions, popularity-skewed; made here, seeded).

    python -m scripts.bench_gcl [--epochs 2] [--backbones mf,lightgcn,...] [--datasets ml-100k,synthetic-ml1m]

`--accuracy` instead trains one configuration to the end on ML-100K (the gcl stage's training code, with
the stand-in genre groups, no augmentation) and prints valid/test Recall@20 / NDCG@20 and timings:

    python -m scripts.bench_gcl --accuracy --model xsimgcl --rank off --set gcl.lambda_cl=0.02

`--time-to-best` trains each backbone on ML-100K (rank level off, no augmentation) with early stopping on
validation Recall@20 (lagcl.train's rule and the model file's patience / min_epochs) under our settings
(conf/model/<backbone>.yaml) and under RecBole 1.2.1's and SELFRec's published defaults for that model,
all in this engine, so the comparison is about the settings; it prints epochs and seconds to the best
validation epoch (`make bench-gcl-ttb`):

    python -m scripts.bench_gcl --time-to-best --backbones lightgcn,sgl --cap 300 [--json out.json]

Each (backbone, dataset) runs in its own subprocess, so peak RSS (ru_maxrss) is that run's own; it is
reported beside the RSS before training starts (data and graph loaded), the difference being what
training adds. Validation time is reported apart from training time. Results go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BACKBONES = ["mf", "lightgcn", "sgl", "lightgcl", "xsimgcl"]
DATASETS = ["ml-100k", "synthetic-ml1m"]
REPO = Path(__file__).resolve().parent.parent

# The peers' published defaults as gcl.* overrides (embedding size, learning rate, batch size, layers, L2
# weight, contrastive weight / temperature / dropout / noise); early stopping stays ours (patience,
# min_epochs, valid Recall@20), so only the learning settings differ. The L2 weight is taken by value:
# each engine's regulariser has its own normalisation.
# RecBole 1.2.1 (the wheel's recbole/properties/overall.yaml: learning_rate 0.001, train_batch_size 2048;
# model/BPR.yaml, LightGCN.yaml, SGL.yaml); it has no LightGCL, XSimGCL (nor SimGCL) model.
_RECBOLE = {"emb_dim": 64, "lr": 0.001, "batch_size": 2048}
# SELFRec (Coder-Yu/SELFRec conf/MF.yaml, LightGCN.yaml, SGL.yaml, XSimGCL.yaml at commit 71deccc:
# embedding.size 64, learning.rate 0.001, batch.size 2048, reg.lambda 1e-4); it has no LightGCL model.
_SELFREC = {"emb_dim": 64, "lr": 0.001, "batch_size": 2048, "lambda_reg": 1e-4}
PEER_DEFAULTS: dict[str, dict[str, dict | None]] = {
    "recbole": {
        "mf": {**_RECBOLE, "lambda_reg": 0.0},  # RecBole's BPR loss has no regulariser term
        "lightgcn": {**_RECBOLE, "n_layers": 2, "lambda_reg": 1e-5},
        "sgl": {**_RECBOLE, "n_layers": 3, "lambda_reg": 1e-5, "lambda_cl": 0.05, "cl_temperature": 0.5,
                "drop_rate": 0.1},  # type ED
        "lightgcl": None,
        "xsimgcl": None,
    },
    "selfrec": {
        "mf": dict(_SELFREC),
        "lightgcn": {**_SELFREC, "n_layers": 2},
        "sgl": {**_SELFREC, "n_layers": 2, "lambda_cl": 0.1, "cl_temperature": 0.2, "drop_rate": 0.1},
        "lightgcl": None,
        "xsimgcl": {**_SELFREC, "n_layers": 2, "l_star": 1, "lambda_cl": 0.2, "eps": 0.2, "cl_temperature": 0.15},
    },
}
SETTINGS = ["ours", "recbole", "selfrec"]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_ml1m(seed: int = 0, n_users: int = 6040, n_items: int = 3706, n_edges: int = 1_000_000):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    # Zipf-like item popularity and log-normal user activity, as in real rating data
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    user_p = rng.lognormal(0.0, 1.0, n_users)
    user_p /= user_p.sum()
    keys = np.empty(0, dtype=np.int64)
    while keys.size < n_edges:
        m = int((n_edges - keys.size) * 1.3) + 1000
        u = rng.choice(n_users, m, p=user_p)
        i = rng.choice(n_items, m, p=item_p)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n_items + i]))
    keys = rng.permutation(keys)[:n_edges]
    r = rng.random(n_edges)
    split = np.where(r < 0.7, "train", np.where(r < 0.8, "valid", "test"))
    inter = pl.DataFrame({"user": (keys // n_items).astype(np.int32), "item": (keys % n_items).astype(np.int32),
                          "sign": np.ones(n_edges, dtype=np.int8), "split": split})
    return inter, n_users, n_items


def ml100k():
    from lagcl.config import load_config
    from lagcl.data.prepare import prepare
    from lagcl.data.readers import read_raw

    cfg = load_config()
    out = prepare(read_raw(cfg.data, REPO), cfg.data, cfg.seed)
    return out.interactions.select("user", "item", "sign", "split"), out.users.height, out.items.height


def one(backbone: str, dataset: str, epochs: int) -> dict:
    import torch

    from lagcl.config import load_config
    from lagcl.models import Graph, build_model
    from lagcl.train import train
    from lagcl.train_data import build_train_data

    cfg = load_config(model=backbone, overrides=[f"gcl.epochs={epochs}", f"gcl.patience={epochs + 1}"])
    if cfg.gcl.num_threads:
        torch.set_num_threads(cfg.gcl.num_threads)
    inter, n_users, n_items = ml100k() if dataset == "ml-100k" else synthetic_ml1m()
    data = build_train_data(inter, n_users, n_items)
    t0 = time.perf_counter()
    graph = Graph(data.edge_users, data.edge_items, n_users, n_items, cfg.graph.backend)
    model = build_model(cfg.gcl, graph, cfg.seed)
    setup_s = time.perf_counter() - t0
    rss_before = _rss_mib()
    result = train(model, data, cfg.gcl, None, cfg.seed, progress=False)
    ep = result.epochs
    return {"backbone": backbone, "dataset": dataset, "users": n_users, "items": n_items,
            "train_edges": int(data.edge_users.numel()), "epochs": ep.height,
            "train_s_per_epoch": float(ep["train_seconds"].mean()), "eval_s_per_epoch": float(ep["eval_seconds"].mean()),
            "setup_s": setup_s, "rss_before_mib": rss_before, "peak_rss_mib": _rss_mib(),
            "threads": torch.get_num_threads()}


def accuracy(model: str, rank: str, overrides: list[str]) -> str:
    import dataclasses

    import torch

    from lagcl.chain.fit import Variant, fit_variant
    from lagcl.chain.levels import Interactions, fit_context
    from lagcl.config import load_config
    from lagcl.data.prepare import prepare
    from lagcl.data.readers import read_raw
    from lagcl.train_data import category_groups

    cfg = load_config(model=model, overrides=[f"rank.enabled={'true' if rank == 'on' else 'false'}", *overrides])
    if cfg.gcl.num_threads:
        torch.set_num_threads(cfg.gcl.num_threads)
    out = prepare(read_raw(cfg.data, REPO), cfg.data, cfg.seed)
    n_users, n_items = out.users.height, out.items.height
    on = rank == "on"
    groups = category_groups(out.interactions, out.items, n_users, n_items) if on else None
    # the gcl stage's own path: its fit context (no checkpoints) and one variant, no data level
    ctx = fit_context(cfg, Interactions(out.interactions, out.items, n_users), None, groups)
    f = fit_variant(dataclasses.replace(ctx, progress=False), Variant("rank" if on else "control", rank=on))
    r = f.result
    v = {(m, 20): f.value("valid", m) for m in ("recall", "ndcg")}
    t = {(m, 20): f.value("test", m) for m in ("recall", "ndcg")}
    return (f"{model} rank={rank} {' '.join(overrides)} | best epoch {r.best_epoch}/{r.epochs.height} | valid "
            f"R@20 {v[('recall', 20)]:.4f} N@20 {v[('ndcg', 20)]:.4f} | test R@20 {t[('recall', 20)]:.4f} "
            f"N@20 {t[('ndcg', 20)]:.4f} | {r.train_seconds:.1f} s training, "
            f"{r.epochs['train_seconds'].mean():.3f} s/epoch")


def settings_overrides(backbone: str, settings: str) -> list[str] | None:
    """gcl.* overrides of `settings` for `backbone`: [] for ours, None where the peer has no such model."""
    if settings == "ours":
        return []
    peer = PEER_DEFAULTS[settings].get(backbone)
    return None if peer is None else [f"gcl.{k}={v}" for k, v in peer.items()]


def time_to_best_row(epochs, best_epoch: int, gcl) -> dict:
    """Epochs and seconds to the best validation epoch, from a run's `epochs` table (one row per epoch).

    Seconds count training and the per-epoch validation (early stopping needs both). `cap_hit`: the run
    ended at `gcl.epochs` before early stopping would have stopped it, so a later epoch might have been
    better: the time to best is then a lower bound."""
    import polars as pl

    secs = epochs.select((pl.col("train_seconds") + pl.col("eval_seconds")).alias("s"), "epoch")
    best = epochs.filter(pl.col("epoch") == best_epoch).row(0, named=True)
    run = epochs.height
    stopped_early = run - best_epoch >= gcl.patience and run >= gcl.min_epochs
    return {"best_epoch": best_epoch, "epochs_run": run, "cap_hit": run >= gcl.epochs and not stopped_early,
            "seconds_to_best": float(secs.filter(pl.col("epoch") <= best_epoch)["s"].sum()),
            "seconds_total": float(secs["s"].sum()),
            "valid_recall@20": best["valid_recall@20"], "valid_ndcg@20": best["valid_ndcg@20"]}


def against_ours(row: dict, rows: list[dict]) -> dict:
    """`row` with its epochs and seconds to the best epoch as multiples of the same backbone's `ours` run in
    `rows` (None where there is none)."""
    ours = next((r for r in rows if r["backbone"] == row["backbone"] and r["settings"] == "ours"
                 and not r["missing"]), None)
    return {**row, "epochs_vs_ours": row["best_epoch"] / ours["best_epoch"] if ours else None,
            "seconds_vs_ours": row["seconds_to_best"] / ours["seconds_to_best"] if ours else None}


def _describe(gcl) -> str:
    text = f"lr {gcl.lr:g}, batch {gcl.batch_size}, d {gcl.emb_dim}, L {gcl.n_layers}, reg {gcl.lambda_reg:g}"
    if gcl.backbone in ("sgl", "lightgcl", "xsimgcl"):
        text += f", cl {gcl.lambda_cl:g}, tau {gcl.cl_temperature:g}"
    if gcl.backbone == "sgl":
        text += f", drop {gcl.drop_rate:g}"
    if gcl.backbone == "xsimgcl":
        text += f", eps {gcl.eps:g}, l* {gcl.l_star}"
    return text


def time_to_best(backbones: list[str], settings: list[str], cap: int, interactions, n_users: int, n_items: int,
                 overrides: list[str] = (), log=None) -> list[dict]:
    """Train each (backbone, settings) to early stopping or `cap` epochs on `interactions` (user, item, sign,
    split), rank level off; one dict per pair: `time_to_best_row`, test R@20 of the best epoch's weights,
    the settings and the per-epoch `history`. A peer without the model gives a row with `missing`."""
    from lagcl.config import load_config
    from lagcl.models import Graph, build_model
    from lagcl.measure import validate
    from lagcl.train import train
    from lagcl.train_data import build_train_data

    data = build_train_data(interactions, n_users, n_items)
    rows = []
    for backbone in backbones:
        for name in settings:
            extra = settings_overrides(backbone, name)
            if extra is None:
                rows.append({"backbone": backbone, "settings": name, "missing": True})
                if log is not None:
                    log(_ttb_line(rows[-1]))
                continue
            cfg = load_config(model=backbone, overrides=["rank.enabled=false", *extra, *overrides,
                                                         f"gcl.epochs={cap}"])
            model = build_model(cfg.gcl, Graph(data.edge_users, data.edge_items, n_users, n_items,
                                               cfg.graph.backend), cfg.seed)
            r = train(model, data, cfg.gcl, None, cfg.seed, progress=False)
            test = validate(model, data, ks=(20,), split="test", batch_size=cfg.gcl.eval_batch_users)
            row = {"backbone": backbone, "settings": name, "missing": False, "described": _describe(cfg.gcl),
                   **time_to_best_row(r.epochs, r.best_epoch, cfg.gcl), "test_recall@20": test[("recall", 20)],
                   "history": r.epochs.to_dicts()}
            rows.append(against_ours(row, rows))
            if log is not None:
                log(_ttb_line(rows[-1]))
    return rows


TTB_HEADER = ("| backbone | settings | best / run epochs | s to best | s total | to best x ours (epochs, s) | "
              "valid R@20 | valid N@20 | test R@20 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")


def _times(x: float) -> str:
    return f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def _ttb_line(r: dict) -> str:
    if r["missing"]:
        return f"| {r['backbone']} | {r['settings']}: no such model | | | | | | | |"
    cap = " (cap)" if r["cap_hit"] else ""
    ratio = (f"{_times(r['epochs_vs_ours'])}, {_times(r['seconds_vs_ours'])}" if r.get("epochs_vs_ours") is not None
             and r["settings"] != "ours" else "")
    return (f"| {r['backbone']} | {r['settings']}: {r['described']} | {r['best_epoch']} / {r['epochs_run']}{cap} | "
            f"{r['seconds_to_best']:.1f} | {r['seconds_total']:.1f} | {ratio} | {r['valid_recall@20']:.4f} | "
            f"{r['valid_ndcg@20']:.4f} | {r['test_recall@20']:.4f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_gcl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--accuracy", action="store_true", help="train one configuration to the end on ML-100K")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--rank", choices=["on", "off"], default="off")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--time-to-best", action="store_true",
                   help="epochs and seconds to the best validation epoch on ML-100K: ours vs the peers' defaults")
    p.add_argument("--settings", default=",".join(SETTINGS), help="with --time-to-best")
    p.add_argument("--cap", type=int, default=300, help="with --time-to-best: the epoch cap")
    p.add_argument("--json", type=Path, help="with --time-to-best: also write the rows and histories here")
    p.add_argument("--one", nargs=2, metavar=("BACKBONE", "DATASET"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.accuracy:
        print(accuracy(args.model, args.rank, args.overrides), flush=True)
        return 0
    if args.time_to_best:
        print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, ML-100K, "
              f"cap {args.cap} epochs\n{TTB_HEADER}", flush=True)
        inter, n_users, n_items = ml100k()
        rows = time_to_best(args.backbones.split(","), args.settings.split(","), args.cap, inter, n_users, n_items,
                            args.overrides, log=lambda line: print(line, flush=True))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    if args.one:
        print("RESULT " + json.dumps(one(*args.one, args.epochs)), flush=True)
        return 0
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"{args.epochs} epochs per run")
    print("| backbone | dataset | train edges | s/epoch (train) | s/epoch (valid) | RSS before MiB | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dataset in args.datasets.split(","):
        for backbone in args.backbones.split(","):
            proc = subprocess.run([sys.executable, "-m", "scripts.bench_gcl", "--one", backbone, dataset,
                                   "--epochs", str(args.epochs)], cwd=REPO, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"| {backbone} | {dataset} | failed: {proc.stderr.strip().splitlines()[-1:]} |||||")
                continue
            r = json.loads(line[7:])
            print(f"| {backbone} | {dataset} | {r['train_edges']:,} | {r['train_s_per_epoch']:.2f} | "
                  f"{r['eval_s_per_epoch']:.2f} | {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
