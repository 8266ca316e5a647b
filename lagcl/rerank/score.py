"""The rerank stage's work behind one call: training data (eq. 13-15), the reranker trained (eq. 16), and the
scores of every (u, v in C_u) (eq. 18), written into the stage folder. The fusion settings (eq. 19-21, the `fusion`
section) are the evaluate stage's: the stage fingerprint does not hash them, so other ones reuse this folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass

import polars as pl

from lagcl.artifacts import StageDir
from lagcl.config import Config
from lagcl.device import resolve_device
from lagcl.errors import DataError, LagclError
from lagcl.rerank.data import (PromptBuilder, build_pairs, candidate_sets, fallback_profiles, histories,
                               item_titles, sample_users, split_users, training_examples, without_test)
from lagcl.rerank.infer import score_texts
from lagcl.rerank.train import launch_command, load_reranker, train_reranker, write_job

log = logging.getLogger("lagcl.rerank")

SCORES = {"user": pl.Int32, "item": pl.Int32, "score": pl.Float64}
USERS_PER_SHARD = 64


@dataclass(frozen=True)
class RerankInputs:
    """What the reranker learns from: prepare's tables, the CF candidates, and the optional upstreams (None
    where the stage is off or not built)."""

    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    cf_topk: pl.DataFrame
    augmented: pl.DataFrame | None
    user_profiles: pl.DataFrame | None
    item_profiles: pl.DataFrame | None


@dataclass
class Outcome:
    """The manifest meta and the files to list (None: every file of the folder); `scored`: pairs were scored
    in this run (not |C_u| = 0); `timed`: False where nothing ran."""

    meta: dict
    files: list[str] | None = None
    scored: bool = True
    timed: bool = True


def profile_texts(x: RerankInputs) -> tuple[dict, dict, str]:
    """Each user's and item's text in the prompts: the profiles stage's summaries, else metadata."""
    user_text, item_text = fallback_profiles(x.users, x.items)
    up, ip = x.user_profiles, x.item_profiles
    if up is None or ip is None:
        return user_text, item_text, "metadata (profiles stage off or not built)"
    user_text.update(dict(zip(up["user"].to_list(), up["summarization"].to_list())))
    item_text.update(dict(zip(ip["item"].to_list(), ip["summarization"].to_list())))
    return user_text, item_text, f"profiles stage ({up['engine'][0]}/{up['model'][0]})"


def train_and_score(sd: StageDir, cfg: Config, x: RerankInputs) -> Outcome:
    """Sample the users (some held out for the fusion grid search), train the reranker on the others' pairs and
    score every (u, v in C_u) of every sampled user into `rerank_scores`."""
    rc = cfg.rerank
    # the test split is dropped on entry: test labels wait for the evaluate stage (docs/design.md decision 10)
    interactions = without_test(x.interactions)
    user_text, item_text, profile_source = profile_texts(x)
    cands = candidate_sets(x.cf_topk, rc.candidates)
    eval_users = sample_users(x.cf_topk["user"].unique().to_numpy(), rc.max_users, cfg.seed)
    roles = split_users(eval_users, rc.holdout_users, cfg.seed)
    sd.write_table("rerank_users", pl.DataFrame({"user": list(roles), "role": list(roles.values())},
                                                schema={"user": pl.Int32, "role": pl.String}))
    meta: dict = {"model": rc.model, "path": rc.spec.path, "format": rc.spec.format,
                  "candidates": rc.candidates, "users": len(roles),
                  "holdout_users": sum(r == "holdout" for r in roles.values()),
                  "profiles": profile_source, "augmented_negatives": x.augmented is not None}
    if rc.candidates == 0:
        # |C_u| = 0: nothing to rerank, the fused ranking is the CF ranking (Figure 4's left end)
        sd.write_table("rerank_scores", pl.DataFrame(schema=SCORES))
        return Outcome({**meta, "trained": False}, scored=False, timed=False)
    if rc.spec.style == "late":
        return _late(sd, cfg, meta, cands, interactions, x, user_text, item_text, roles)
    return _cross(sd, cfg, meta, cands, interactions, x, user_text, item_text, roles)


def _cross(sd: StageDir, cfg: Config, meta: dict, cands: pl.DataFrame, interactions: pl.DataFrame,
           x: RerankInputs, user_text: dict, item_text: dict, roles: dict[int, str]) -> Outcome:
    """`spec.style = cross`: a prompt per (u, v), the sequence classifier fine-tuned on them (eq. 16), every
    pair scored in shards of users so an interrupted scoring run continues where it stopped."""
    rc = cfg.rerank
    prompts = PromptBuilder(user_text, item_text, item_titles(x.items), rc.spec.format, rc.spec.profile_chars,
                            cfg.data.domain)
    pairs = build_pairs(cands, interactions, histories(interactions, x.augmented, rc.history), prompts, roles)
    train = training_examples(pairs, rc.neg_per_pos, rc.max_train_pairs, cfg.seed)
    sd.write_table("rerank_train", train.select("user", "item", "cf_rank", "label", "text"))
    log.info("rerank: %d users (%d held out for the fusion grid search), %d candidate pairs, %d training pairs "
             "(%d positive); prompts from %s", len(roles), meta["holdout_users"], pairs.height, train.height,
             int(train["label"].sum()), meta["profiles"])

    out_dir = sd.file_path("reranker")
    if rc.spec.launcher == "deepspeed" and not (out_dir / "model" / "done.json").is_file():
        job = sd.file_path("train_job.json")
        write_job(job, spec=rc.spec, train_table=sd.table_path("rerank_train"), out_dir=out_dir,
                  epochs=rc.epochs, seed=cfg.seed, deepspeed=rc.deepspeed)
        cmd = launch_command(job, rc.spec)
        print(f"rerank: train the reranker on {rc.spec.num_gpus} GPU(s) with\n\n    {cmd}\n\n"
              "then run the same pipeline command again: it picks the trained model up and scores C_u.")
        raise LagclError(f"rerank: the reranker trains outside the pipeline (spec.launcher=deepspeed); run `{cmd}` "
                         "and rerun the pipeline")
    t_train = time.time()
    model, tokenizer = load_reranker(rc.spec, seed=cfg.seed)
    res = train_reranker(model, tokenizer, train["text"].to_list(), train["label"].to_list(), out_dir, rc.spec,
                         rc.epochs, cfg.seed, rc.deepspeed, log=log)
    train_seconds = time.time() - t_train
    log.info("rerank: %s %d steps (loss %s) in %.1f s%s", "found trained model," if res.skipped else "trained",
             res.global_step, res.train_loss, train_seconds, f", resumed from {res.resumed_from}"
             if res.resumed_from else "")

    done_users = set(sd.read_shards("rerank_scores", SCORES)["user"].unique().to_list())
    todo = [u for u in pairs["user"].unique(maintain_order=True).to_list() if u not in done_users]
    t_inf = time.time()
    for i in range(0, len(todo), USERS_PER_SHARD):
        chunk = pairs.filter(pl.col("user").is_in(todo[i:i + USERS_PER_SHARD]))
        s = score_texts(res.model, res.tokenizer, chunk["text"].to_list(), rc.spec.eval_batch_size,
                        rc.spec.max_length, rc.spec.device)
        sd.write_shard("rerank_scores", chunk.select("user", "item").with_columns(pl.Series("score", s)))
        log.info("rerank: scored %d/%d users", len(done_users) + min(i + USERS_PER_SHARD, len(todo)), len(roles))
    scores = sd.read_shards("rerank_scores", SCORES).unique(["user", "item"], keep="last").sort("user", "item")
    if scores.height != pairs.height:
        raise DataError(f"rerank: {scores.height} scores for {pairs.height} candidate pairs")
    sd.write_table("rerank_scores", scores)
    meta.update({"trained": True, "train_pairs": train.height, "train_positives": int(train["label"].sum()),
                 "global_step": res.global_step, "train_loss": res.train_loss,
                 "resumed_from": res.resumed_from, "train_seconds": round(train_seconds, 2),
                 "score_seconds": round(time.time() - t_inf, 2), "scored_pairs": scores.height,
                 "epochs": rc.epochs, "deepspeed": rc.deepspeed,
                 "lora": rc.spec.lora is not None})
    return Outcome(meta, _outputs(sd, out_dir))


def _late(sd: StageDir, cfg: Config, meta: dict, cands: pl.DataFrame, interactions: pl.DataFrame,
          x: RerankInputs, user_text: dict, item_text: dict, roles: dict[int, str]) -> Outcome:
    """`spec.style = late` (lagcl/rerank/late.py): every user and item text encoded once, a head trained on
    the training users' pairs (eq. 15-16), every (u, v in C_u) scored by the head: cost ~ users + items."""
    from lagcl.rerank.late import encode_texts, history_items, pair_features, score_features, train_head
    from lagcl.rerank.train import resolve_model_path
    from lagcl.semantic.embedding import SentenceEncoder

    rc = cfg.rerank
    spec = rc.spec
    hist = histories(interactions, x.augmented, rc.history).filter(pl.col("user").is_in(list(roles)))
    pairs = build_pairs(cands, interactions, hist, None, roles)
    train = training_examples(pairs, rc.neg_per_pos, rc.max_train_pairs, cfg.seed)
    sd.write_table("rerank_train", train.select("user", "item", "cf_rank", "label"))
    device = resolve_device(spec.device)
    t_enc = time.time()
    folder, _ = resolve_model_path(spec)
    encoder = SentenceEncoder(str(folder), device=device, batch_size=spec.eval_batch_size)
    emb = encode_texts(encoder, user_text, item_text, list(roles), set(pairs["item"].to_list()) |
                       history_items(hist), spec.profile_chars)
    encode_seconds = time.time() - t_enc
    log.info("rerank: late interaction, %d users + items encoded once each in %.1f s (%d pairs, %d training "
             "pairs, %d positive)", emb.encoded, encode_seconds, pairs.height, train.height, int(train["label"].sum()))
    t_train = time.time()
    res = train_head(pair_features(train, hist, emb, rc.candidates), train["label"].to_list(),
                     sd.file_path("reranker"), hidden=spec.head_hidden, epochs=spec.head_epochs, lr=spec.lr,
                     weight_decay=spec.weight_decay, batch_size=spec.batch_size, seed=cfg.seed, device=device, log=log)
    train_seconds = time.time() - t_train
    t_inf = time.time()
    s = score_features(res.head, pair_features(pairs, hist, emb, rc.candidates))
    scores = pairs.select("user", "item").with_columns(pl.Series("score", s)).sort("user", "item")
    sd.write_table("rerank_scores", scores)
    meta.update({"trained": True, "style": "late", "device": device, "train_pairs": train.height,
                 "train_positives": int(train["label"].sum()), "global_step": res.global_step,
                 "train_loss": res.train_loss, "resumed_from": None, "texts_encoded": emb.encoded,
                 "encode_seconds": round(encode_seconds, 2), "train_seconds": round(train_seconds, 2),
                 "score_seconds": round(time.time() - t_inf, 2), "scored_pairs": scores.height,
                 "epochs": spec.head_epochs, "deepspeed": None,
                 "lora": False})
    return Outcome(meta, _outputs(sd, sd.file_path("reranker")))


def _outputs(sd: StageDir, out_dir: Path) -> list[str]:
    """The stage's tables and the trained model's files (checkpoints of the run are not outputs)."""
    return ["rerank_users.parquet", "rerank_train.parquet", "rerank_scores.parquet"] + sorted(
        str(p.relative_to(sd.path)) for p in (out_dir / "model").rglob("*") if p.is_file())
