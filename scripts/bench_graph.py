"""Graph backends side by side: forward+backward seconds per training epoch of each backbone with
graph.backend=torch and graph.backend=dgl, on ML-100K and the synthetic ML-1M-sized graph of
scripts/bench_gcl.py (6,040 users x 3,706 items, 1M interactions, 70% of them training edges).

    make bench-graph    # = .venv-dgl/bin/python -m scripts.bench_graph --reference-python .venv/bin/python

Run in .venv-dgl, the only environment with DGL, so both backends run on the same torch (2.2.1 there).
For each (dataset, backbone) both models are built from the same seed on the same training edges, and
the timed work is the gcl trainer's: per batch of 2,048 training edges, `batch_losses` (the backbone's
full-graph encode, BPR + its InfoNCE) and `backward()`; sampling and the Adam step are left out, as
they do not touch the graph. Batches alternate between the backends (torch then dgl on one batch, dgl then
torch on the next), so machine load hits both alike; each cell is the median of all its timed
batches. s/epoch = median batch x batches per epoch + the per-epoch `new_epoch()` (SGL's two
edge-dropped graphs; median of the rounds). One torch/DGL thread (`gcl.num_threads: 1`, the default).

A second table times one propagation A @ x (64 columns) forward+backward with each kernel: torch's CSR
SpMM (the torch backend), DGL's copy_u_sum between two D^-1/2 scalings (the DGL backend), and DGL's
edge-weighted u_mul_e_sum (`update_all(u_mul_e, sum)`, kept for comparison).

`--equivalence` instead trains LightGCN for 3 epochs on ML-100K on each backend (seed 2024, the gcl
trainer) and prints both backends' per-epoch losses and final valid/test Recall/NDCG@10/20/50.

`--reference-python .venv/bin/python` also runs the torch backend alone in that interpreter (the main
environment's newer torch) and adds it as a last column, for reference: it runs after, not interleaved.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from scripts.bench_gcl import BACKBONES, DATASETS, ml100k, synthetic_ml1m

REPO = Path(__file__).resolve().parent.parent


def _load(dataset: str):
    from lagcl.train_data import build_train_data

    inter, n_users, n_items = ml100k() if dataset == "ml-100k" else synthetic_ml1m()
    return build_train_data(inter, n_users, n_items)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_backbone(data, backbone: str, backends: list[str], rounds: int, batches: int) -> dict:
    from lagcl.config import load_config
    from lagcl.models import Graph, build_model
    from lagcl.train import batch_losses

    cfg = load_config(model=backbone)
    torch.set_num_threads(cfg.gcl.num_threads or torch.get_num_threads())
    models, setup = {}, {}
    for backend in backends:
        t0 = time.perf_counter()
        graph = Graph(data.edge_users, data.edge_items, data.n_users, data.n_items, backend)
        models[backend] = build_model(cfg.gcl, graph, cfg.seed)
        setup[backend] = time.perf_counter() - t0
    n_edges = data.edge_users.numel()
    per_epoch = -(-n_edges // cfg.gcl.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n_edges, generator=gen)
    batch_t = {b: [] for b in backends}
    epoch_t = {b: [] for b in backends}
    for r in range(rounds):
        for backend in (backends if r % 2 == 0 else backends[::-1]):
            epoch_t[backend].append(_timed(lambda: models[backend].new_epoch(torch.Generator().manual_seed(r))))
        for k in range(batches):
            step = r * batches + k
            idx = perm[(step * cfg.gcl.batch_size) % n_edges:][:cfg.gcl.batch_size]
            users, items = data.edge_users[idx], data.edge_items[idx]
            negs = data.sampler.sample(users, torch.Generator().manual_seed(step))
            for backend in (backends if step % 2 == 0 else backends[::-1]):  # neither always goes first
                model = models[backend]
                model.zero_grad(set_to_none=True)
                step_gen = torch.Generator().manual_seed(step)
                batch_t[backend].append(_timed(
                    lambda: batch_losses(model, data, users, items, negs, cfg.gcl, None, step_gen)["loss"].backward()))
    out = {"backbone": backbone, "train_edges": n_edges, "batches_per_epoch": per_epoch, "torch": torch.__version__}
    for backend in backends:
        med_b, med_e = statistics.median(batch_t[backend]), statistics.median(epoch_t[backend])
        out[backend] = {"batch_s": med_b, "new_epoch_s": med_e, "epoch_s": med_e + per_epoch * med_b,
                        "setup_s": setup[backend], "samples": len(batch_t[backend])}
    return out


def bench_propagation(data, backends: list[str], repeats: int, dim: int = 64) -> dict:
    """Median seconds of one A @ x forward+backward per kernel, interleaved."""
    from lagcl.models import Graph

    graphs = {b: Graph(data.edge_users, data.edge_items, data.n_users, data.n_items, b) for b in backends}
    kernels = {"torch csr spmm": lambda x: graphs["torch"].propagate(x)} if "torch" in graphs else {}
    if "dgl" in graphs:
        from lagcl.models.graph_dgl import propagate_edge_weighted

        kernels["dgl s*copy_u_sum(s*x)"] = lambda x: graphs["dgl"].propagate(x)
        kernels["dgl u_mul_e_sum"] = lambda x: propagate_edge_weighted(graphs["dgl"], x)
    x = torch.randn(data.n_users + data.n_items, dim, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    times = {k: [] for k in kernels}
    for r in range(repeats):
        for name in (list(kernels) if r % 2 == 0 else list(kernels)[::-1]):
            x.grad = None
            times[name].append(_timed(lambda: kernels[name](x).sum().backward()))
    return {k: statistics.median(v) for k, v in times.items()}


def run(datasets: list[str], backbones: list[str], backends: list[str], rounds: int, batches: int) -> dict:
    torch.set_num_threads(1)
    results = {"torch": torch.__version__, "datasets": {}}
    for dataset in datasets:
        t0 = time.perf_counter()
        data = _load(dataset)
        print(f"# {dataset}: {data.n_users} users, {data.n_items} items, {data.edge_users.numel():,} training "
              f"edges ({time.perf_counter() - t0:.1f} s to load)", file=sys.stderr, flush=True)
        cells = {"propagation": bench_propagation(data, backends, repeats=4 * rounds), "backbones": {}}
        for backbone in backbones:
            cells["backbones"][backbone] = bench_backbone(data, backbone, backends, rounds, batches)
            print(f"#   {backbone}: " + ", ".join(f"{b} {cells['backbones'][backbone][b]['epoch_s']:.2f} s/epoch"
                                                  for b in backends), file=sys.stderr, flush=True)
        results["datasets"][dataset] = cells
    return results


def equivalence(epochs: int = 3) -> str:
    from lagcl.config import load_config
    from lagcl.models import Graph, build_model
    from lagcl.measure import validate
    from lagcl.train import train

    data = _load("ml-100k")
    cfg = load_config(model="lightgcn", overrides=[f"gcl.epochs={epochs}", f"gcl.patience={epochs + 1}"])
    ks, rows = (10, 20, 50), {}
    for backend in ("torch", "dgl"):
        model = build_model(cfg.gcl, Graph(data.edge_users, data.edge_items, data.n_users, data.n_items, backend),
                            cfg.seed)
        result = train(model, data, cfg.gcl, None, cfg.seed, progress=False)
        metrics = {s: validate(model, data, ks=ks, split=s) for s in ("valid", "test")}
        rows[backend] = (result.epochs["loss"].to_list(), result.epochs["valid_recall@20"].to_list(),
                         result.best_epoch, metrics)
    cols = [(s, m, k) for s in ("valid", "test") for m in ("recall", "ndcg") for k in ks]
    lines = [f"# LightGCN, ML-100K, {epochs} epochs, seed {cfg.seed}, torch {torch.__version__}", "",
             "| backend | loss per epoch | valid recall@20 per epoch | best epoch (kept) | "
             + " | ".join(f"{s} {m}@{k}" for s, m, k in cols) + " |",
             "|---|---|---|---:|" + "---:|" * len(cols)]
    for backend, (losses, recalls, best, metrics) in rows.items():
        lines.append(f"| {backend} | {', '.join(f'{v:.8f}' for v in losses)} | {', '.join(f'{v:.6f}' for v in recalls)} "
                     f"| {best} | "
                     + " | ".join(f"{metrics[s][(m, k)]:.6f}" for s, m, k in cols) + " |")
    return "\n".join(lines)


def _reference(python: str, argv: list[str]) -> dict | None:
    proc = subprocess.run([python, "-m", "scripts.bench_graph", *argv, "--backends", "torch", "--json"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"# reference run with {python} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def markdown(res: dict, ref: dict | None) -> str:
    both = "dgl" in next(iter(res["datasets"].values()))["backbones"][next(iter(
        next(iter(res["datasets"].values()))["backbones"]))]
    ref_col = f" | torch backend, torch {ref['torch']} (main env)" if ref else ""
    lines = [f"# {platform.machine()}, python {platform.python_version()}, torch {res['torch']}, medians",
             "", f"| dataset | backbone | train edges | batches / epoch | torch backend s/epoch | "
             f"{'dgl backend s/epoch | dgl / torch' if both else ''}{ref_col} |",
             "|---|---|---:|---:|---:|" + ("---:|---:|" if both else "") + ("---:|" if ref else "")]
    for dataset, cells in res["datasets"].items():
        for backbone, c in cells["backbones"].items():
            row = f"| {dataset} | {backbone} | {c['train_edges']:,} | {c['batches_per_epoch']} | {c['torch']['epoch_s']:.2f}"
            if both:
                row += f" | {c['dgl']['epoch_s']:.2f} | {c['dgl']['epoch_s'] / c['torch']['epoch_s']:.2f}"
            if ref:
                row += f" | {ref['datasets'][dataset]['backbones'][backbone]['torch']['epoch_s']:.2f}"
            lines.append(row + " |")
    lines += ["", "| dataset | one propagation A @ x, 64 columns, forward+backward | ms |", "|---|---|---:|"]
    for dataset, cells in res["datasets"].items():
        for kernel, s in cells["propagation"].items():
            lines.append(f"| {dataset} | {kernel} (torch {res['torch']}) | {1000 * s:.1f} |")
        if ref:
            lines.append(f"| {dataset} | torch csr spmm (torch {ref['torch']}, main env) | "
                         f"{1000 * ref['datasets'][dataset]['propagation']['torch csr spmm']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_graph", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--backends", default="torch,dgl")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per (dataset, backbone)")
    p.add_argument("--batches", type=int, default=3, help="timed batches per backend per round")
    p.add_argument("--reference-python", help="also time the torch backend under this interpreter")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    p.add_argument("--equivalence", action="store_true", help="3 LightGCN epochs on ML-100K on both backends")
    args = p.parse_args(argv)
    if args.equivalence:
        torch.set_num_threads(1)
        print(equivalence())
        return 0
    backends = args.backends.split(",")
    if "dgl" in backends:
        from lagcl.models.graph import _dgl_graph_class

        _dgl_graph_class()  # a missing DGL is a clear error before any data is loaded
    common = ["--datasets", args.datasets, "--backbones", args.backbones, "--rounds", str(args.rounds),
              "--batches", str(args.batches)]
    res = run(args.datasets.split(","), args.backbones.split(","), backends, args.rounds, args.batches)
    if args.json:
        print(json.dumps(res))
        return 0
    ref = _reference(args.reference_python, common) if args.reference_python else None
    print(markdown(res, ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
