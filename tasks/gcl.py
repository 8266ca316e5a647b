"""Stage 4: train the configured backbone (with or without the rank level) -> checkpoint, cf_topk,
epochs, metrics (eq. 7-12).

With `graph.backend: dgl` and no DGL in this Python (the main environment: PyPI's DGL 2.1.0 needs torch
<= 2.2.1), `run` runs this same stage code in the DGL environment, `python -m tasks.gcl` under
$LAGCL_DGL_PYTHON (default `.venv-dgl/bin/python`, built by `make setup-dgl`): the configuration and the
fingerprints go in on stdin, the child writes the stage folder (lock, checkpoints, manifest) exactly as an
in-process run would, and its log lines are re-emitted through this process's "lagcl" logger (so they
reach Prefect). The parent never opens the stage folder, so it holds no lock the child would wait on.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import polars as pl
import torch

from lagcl.artifacts import is_complete, read_table
from lagcl.config import Config
from lagcl.errors import ConfigError, LagclError
from lagcl.evaluate import rank_topk
from lagcl.models import Graph, build_model
from lagcl.train import build_train_data, category_groups, train, validate
from tasks.base import REPO_ROOT, Plan, StageRef, log, rank_enabled

STAGE = "gcl"
DGL_PYTHON_ENV = "LAGCL_DGL_PYTHON"
_LOG_PREFIX = "@lagcl-log:"  # marks the child's log records in its output, level name follows


def _upstream_table(plan: Plan, stage: str, name: str) -> pl.DataFrame | None:
    """A table of an optional upstream stage, or None while that stage is off or not built yet."""
    ref = plan.upstream(STAGE).get(stage)
    if ref is None or not is_complete(Path(ref.path), verify=False):
        return None
    return read_table(Path(ref.path), name)


def _groups(plan: Plan, interactions: pl.DataFrame, items: pl.DataFrame, n_users: int, n_items: int
            ) -> tuple[torch.Tensor, torch.Tensor, str]:
    if plan.cfg.rank.groups_from == "groups":
        ug, ig = _upstream_table(plan, "groups", "user_groups"), _upstream_table(plan, "groups", "item_groups")
        if ug is not None and ig is not None:
            user_group = torch.full((n_users,), -1, dtype=torch.long)
            item_group = torch.full((n_items,), -1, dtype=torch.long)
            user_group[torch.from_numpy(ug["user"].to_numpy().astype("int64"))] = \
                torch.from_numpy(ug["group"].to_numpy().astype("int64"))
            item_group[torch.from_numpy(ig["item"].to_numpy().astype("int64"))] = \
                torch.from_numpy(ig["group"].to_numpy().astype("int64"))
            # an ungrouped node must not be "hard" for every other ungrouped node: give each its own group
            for g in (user_group, item_group):
                missing = g < 0
                g[missing] = int(g.max()) + 1 + torch.arange(int(missing.sum()))
            return user_group, item_group, "groups"
        log.warning("gcl: the groups stage has no output in this run; using the stand-in genre groups")
    user_group, item_group = category_groups(interactions, items, n_users, n_items)
    return user_group, item_group, "categories (stand-in: first genre)"


def dgl_python() -> Path:
    """The interpreter of the DGL environment: $LAGCL_DGL_PYTHON, else the repository's .venv-dgl."""
    return Path(os.environ.get(DGL_PYTHON_ENV) or REPO_ROOT / ".venv-dgl" / "bin" / "python")


def runs_in_dgl_env(plan: Plan) -> bool:
    """True when this stage must run in the DGL environment: DGL asked for and not importable here."""
    return plan.cfg.graph.backend == "dgl" and importlib.util.find_spec("dgl") is None


def run(plan: Plan) -> StageRef:
    if runs_in_dgl_env(plan):
        return _run_in_dgl_env(plan)
    return _run(plan)


def _run_in_dgl_env(plan: Plan) -> StageRef:
    """Run `_run(plan)` under the DGL environment's Python and wait for it, streaming its output."""
    ref = plan.ref(STAGE)
    if is_complete(Path(ref.path)):
        return ref
    python = dgl_python()
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise ConfigError(f"graph.backend=dgl runs the gcl stage with {python} (${DGL_PYTHON_ENV}), which does not "
                          "exist: run `make setup-dgl` first (it builds .venv-dgl), or set "
                          f"{DGL_PYTHON_ENV} to a Python with dgl==2.1.0 and this project installed")
    payload = json.dumps({"config": plan.cfg.model_dump(mode="json"), "fingerprints": plan.fingerprints,
                          "path": ref.path})
    log.info("gcl: graph.backend=dgl, running the stage in the DGL environment (%s)", python)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=30)
    bar_open = False  # a progress bar is drawn on stderr's last line: end it before the next log line
    # newline="": keep each piece's own terminator, so tqdm's "\r" redraws can be told from whole lines
    proc = subprocess.Popen([str(python), "-m", "tasks.gcl", "--plan-from-stdin"], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.stdin.write(payload.encode())
        proc.stdin.close()
        for piece in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline=""):
            line = piece.rstrip("\r\n")
            if bar_open and not piece.endswith("\r"):
                sys.stderr.write("\n")
                bar_open = False
            if line.startswith(_LOG_PREFIX):
                level, _, msg = line[len(_LOG_PREFIX):].partition(":")
                log.log(logging.getLevelName(level) if level.isupper() else logging.INFO, "%s", msg)
                tail.append(msg)
            elif piece.endswith("\r"):  # a progress-bar redraw: show it live, keep it out of the log
                sys.stderr.write("\r" + line)
                sys.stderr.flush()
                bar_open = bool(line)
            elif line.strip():
                log.info("gcl (DGL env): %s", line)
                tail.append(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the child; its checkpoint lets the next run resume
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc != 0:
        raise LagclError(f"the gcl stage in the DGL environment ({python}) failed with exit status {rc}; its last "
                         "output:\n  " + "\n  ".join(tail))
    if not is_complete(Path(ref.path)):
        raise LagclError(f"the gcl stage in the DGL environment ({python}) exited cleanly but {ref.path} is not a "
                         "complete stage folder; rerun to resume it")
    return ref


def _run(plan: Plan) -> StageRef:
    cfg = plan.cfg
    ref = plan.ref(STAGE)
    ups = plan.upstream(STAGE)
    with plan.stage_dir(STAGE) as sd:
        if sd.complete:
            return ref
        t_start = time.perf_counter()
        prep = Path(ups["prepare"].path)
        interactions = read_table(prep, "interactions")
        items = read_table(prep, "items")
        n_users, n_items = read_table(prep, "users").height, items.height
        augmented = _upstream_table(plan, "augment", "augmented")
        rank = cfg.rank if rank_enabled(cfg) else None
        user_group = item_group = None
        groups_source = "none (rank level off)"
        if rank is not None:
            user_group, item_group, groups_source = _groups(plan, interactions, items, n_users, n_items)
        data = build_train_data(interactions, n_users, n_items, augmented, user_group, item_group,
                                dislike_prob=rank.dislike_sample_prob if rank is not None else 0.0)
        graph = Graph(data.edge_users, data.edge_items, n_users, n_items, cfg.graph.backend)
        model = build_model(cfg.gcl, graph, cfg.seed)
        log.info("gcl: %s (rank level %s), %d users, %d items, %d graph edges (%d augmented), %d dislikes, "
                 "groups: %s", cfg.gcl.backbone, "on" if rank else "off", n_users, n_items,
                 data.info["graph_edges"], data.info["augmented_positives"], data.info["dislikes"], groups_source)
        result = train(model, data, cfg.gcl, rank, cfg.seed, ckpt_dir=sd.file_path("checkpoints"))
        torch.save({"backbone": cfg.gcl.backbone, "state_dict": result.best_state, "n_users": n_users,
                    "n_items": n_items, "best_epoch": result.best_epoch, "gcl": cfg.gcl.model_dump(),
                    "rank": cfg.rank.model_dump() if rank else None}, sd.file_path("model.pt"))

        ks = sorted(set(cfg.evaluate.topk) | {20})
        metrics = {s: validate(model, data, ks=ks, split=s, batch_size=cfg.gcl.eval_batch_users)
                   for s in ("valid", "test")}
        sd.write_table("metrics", pl.DataFrame(
            [{"split": s, "metric": m, "k": k, "value": v} for s, ms in metrics.items() for (m, k), v in ms.items()],
            schema={"split": pl.String, "metric": pl.String, "k": pl.Int32, "value": pl.Float64}))

        model.eval()
        with torch.no_grad():
            cache = model.embeddings()
        users = torch.arange(n_users)
        top_items, top_scores = rank_topk(lambda u: model.score(u, cache), users, cfg.gcl.topk_out,
                                          data.train_pos, cfg.gcl.eval_batch_users)
        k = top_items.shape[1]
        sd.write_table("cf_topk", pl.DataFrame({
            "user": users.repeat_interleave(k).numpy().astype("int32"),
            "item": top_items.flatten().numpy().astype("int32"),
            "score": top_scores.flatten().double().numpy(),
            "rank": torch.arange(1, k + 1, dtype=torch.int32).repeat(n_users).numpy(),
        }))
        sd.write_table("epochs", result.epochs)
        epochs = result.epochs.height
        meta = {
            "backbone": cfg.gcl.backbone, "rank_level": rank is not None, "groups": groups_source,
            "augmented": augmented is not None, "data": data.info,
            "best_epoch": result.best_epoch, "epochs_run": epochs, "resumed_from_epoch": result.resumed_from,
            "test_recall@20": metrics["test"][("recall", 20)], "test_ndcg@20": metrics["test"][("ndcg", 20)],
            "valid_recall@20": metrics["valid"][("recall", 20)], "valid_ndcg@20": metrics["valid"][("ndcg", 20)],
            "train_seconds": round(result.train_seconds, 3),
            "seconds_per_epoch": round(float(result.epochs["train_seconds"].mean()), 4) if epochs else None,
            "stage_seconds": round(time.perf_counter() - t_start, 3),
        }
        sd.finish(meta)
    log.info("gcl %s: best epoch %d of %d, test Recall@20 %.4f NDCG@20 %.4f, valid Recall@20 %.4f; "
             "%.1f s training (%.3f s/epoch)", cfg.gcl.backbone, meta["best_epoch"], epochs,
             meta["test_recall@20"], meta["test_ndcg@20"], meta["valid_recall@20"], meta["train_seconds"],
             meta["seconds_per_epoch"] or 0.0)
    return ref


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.gcl --plan-from-stdin`: the DGL environment's side of `_run_in_dgl_env`."""
    p = argparse.ArgumentParser(prog="python -m tasks.gcl", description=main.__doc__)
    p.add_argument("--plan-from-stdin", action="store_true", required=True,
                   help='read {"config", "fingerprints", "path"} as JSON from stdin and run the gcl stage here')
    p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_PREFIX + "%(levelname)s:%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        payload = json.load(sys.stdin)
        plan = Plan(Config.model_validate(payload["config"]), dict(payload["fingerprints"]))
        if plan.ref(STAGE).path != payload["path"]:
            raise LagclError(f"the DGL environment resolves the gcl stage folder to {plan.ref(STAGE).path}, not "
                             f"{payload['path']}: run both environments from the same checkout")
        _run(plan)
    except LagclError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
