"""Per-epoch training seconds and peak memory of each backbone, on ML-100K and on a synthetic graph of
ML-1M size (6,040 users x 3,706 items, 1M interactions, popularity-skewed; made here, seeded).

    python -m scripts.bench_gcl [--epochs 2] [--backbones mf,lightgcn,...] [--datasets ml-100k,synthetic-ml1m]

`--accuracy` instead trains one configuration to the end on ML-100K (the gcl stage's training code, with
the stand-in genre groups, no augmentation) and prints valid/test Recall@20 / NDCG@20 and timings:

    python -m scripts.bench_gcl --accuracy --model xsimgcl --rank off --set gcl.lambda_cl=0.02

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
    from lagcl.train import build_train_data, train

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
    import torch

    from lagcl.config import load_config
    from lagcl.data.prepare import prepare
    from lagcl.data.readers import read_raw
    from lagcl.models import Graph, build_model
    from lagcl.train import build_train_data, category_groups, train, validate

    cfg = load_config(model=model, overrides=[f"rank.enabled={'true' if rank == 'on' else 'false'}", *overrides])
    if cfg.gcl.num_threads:
        torch.set_num_threads(cfg.gcl.num_threads)
    out = prepare(read_raw(cfg.data, REPO), cfg.data, cfg.seed)
    n_users, n_items = out.users.height, out.items.height
    on = rank == "on"
    ug, ig = category_groups(out.interactions, out.items, n_users, n_items) if on else (None, None)
    data = build_train_data(out.interactions, n_users, n_items, None, ug, ig,
                            cfg.rank.dislike_sample_prob if on else 0.0)
    model_ = build_model(cfg.gcl, Graph(data.edge_users, data.edge_items, n_users, n_items), cfg.seed)
    r = train(model_, data, cfg.gcl, cfg.rank if on else None, cfg.seed, progress=False)
    v, t = validate(model_, data, ks=(20,)), validate(model_, data, ks=(20,), split="test")
    return (f"{model} rank={rank} {' '.join(overrides)} | best epoch {r.best_epoch}/{r.epochs.height} | valid "
            f"R@20 {v[('recall', 20)]:.4f} N@20 {v[('ndcg', 20)]:.4f} | test R@20 {t[('recall', 20)]:.4f} "
            f"N@20 {t[('ndcg', 20)]:.4f} | {r.train_seconds:.1f} s training, "
            f"{r.epochs['train_seconds'].mean():.3f} s/epoch")


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
    p.add_argument("--one", nargs=2, metavar=("BACKBONE", "DATASET"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.accuracy:
        print(accuracy(args.model, args.rank, args.overrides), flush=True)
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
