"""Stage 4: train the configured backbone (with or without the rank level) -> checkpoint, cf_topk,
epochs, metrics (eq. 7-12)."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import torch

from lagcl.artifacts import is_complete, read_table
from lagcl.evaluate import rank_topk
from lagcl.models import Graph, build_model
from lagcl.train import build_train_data, category_groups, train, validate
from tasks.base import Plan, StageRef, log, rank_enabled

STAGE = "gcl"


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


def run(plan: Plan) -> StageRef:
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
