"""Stage 3: semantic groups of users and of items (eq. 5-6).

With `groups.incremental` the stage starts from the latest finished groups result of the same dataset made by
the same engine, model, seed and group settings (a folder of this stage under the dataset's cache folder, never
anything outside it): unchanged profiles keep their partition groups and only the rest is asked
(lagcl/groups.py). Without such a result it runs as a full one."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lagcl.artifacts import has_table, is_complete, read_manifest, read_table
from lagcl.errors import ArtifactError
from lagcl.groups import PreviousGroups, build_groups, genre_purity
from lagcl.profiles import raw_labels, read_profiles
from lagcl.semantic import SemanticEngine, make_engine
from tasks.base import Plan, StageRef, log, run_stage

STAGE = "groups"
MEMBERS = "group_members"
# shard naming the previous result an incremental run started from: a resumed run builds on the same one (its
# kept groups are in the shards already, under that result's batch numbers)
STARTED_FROM = "incremental_from"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def previous_result(plan: Plan, here: Path, engine: SemanticEngine,
                    pinned: str | None = None) -> tuple[str, dict[str, PreviousGroups]] | None:
    """The latest finished groups folder of the dataset, other than `here`, with no failed requests, made by the
    same engine and model with the same seed and group settings (`incremental` aside), and recording its members'
    profile digests (groups version 3 on); only the folder named `pinned` where given. None when there is none
    or `groups.incremental` is off."""
    if not plan.cfg.groups.incremental:
        return None

    def settings(groups: dict) -> dict:
        return {k: v for k, v in groups.items() if k != "incremental"}

    want = settings(plan.cfg.groups.model_dump(mode="json"))
    found = []
    for folder in plan.store.iter_stage_dirs(STAGE):
        manifest = read_manifest(folder)
        if folder == here or manifest is None or not has_table(folder, MEMBERS) or pinned not in (None, folder.name):
            continue
        meta, config = manifest.get("meta", {}), manifest.get("config", {})
        if (meta.get("failed") or (meta.get("engine"), meta.get("model")) != (engine.name, engine.model)
                or config.get("seed") != plan.cfg.seed or settings(config.get("groups", {})) != want):
            continue
        if is_complete(folder):
            found.append((manifest.get("finished_at", ""), folder.name, folder))
    if not found:
        return None
    folder = max(found)[2]
    parts, members, sim = (read_table(folder, t) for t in ("group_partitions", MEMBERS, "group_similarity"))
    return folder.name, {kind: PreviousGroups(parts.filter(pl.col("kind") == kind),
                                              members.filter(pl.col("kind") == kind),
                                              sim.filter(pl.col("kind") == kind)) for kind in ("user", "item")}


def _build(plan: Plan, sd) -> dict:
    cfg = plan.cfg
    g = cfg.groups
    engine = make_engine(cfg, plan.store.root, STAGE)
    items = plan.input("prepare", "items")
    labels = {"user": raw_labels(plan.input("prepare", "users"), "user"), "item": raw_labels(items, "item")}
    started = sd.read_shards(STARTED_FROM)
    pinned = started["folder"][0] if started.height else None
    previous = previous_result(plan, sd.path, engine, pinned)
    if pinned and not previous:
        raise ArtifactError(f"{sd.path} was started from the groups result {pinned}, which is gone or no longer "
                            f"matches; delete {sd.path} to group from scratch")
    if previous:
        log.info("groups: incremental from the finished result %s", previous[0])
        if not pinned:
            sd.write_shard(STARTED_FROM, pl.DataFrame({"folder": [previous[0]]}))
    out, stats = {}, {}
    for kind in ("user", "item"):
        profiles = read_profiles(plan.input("profiles", f"{kind}_profiles"), kind, labels[kind])
        out[kind] = build_groups(engine, kind, profiles, g.batch_size, g.target_group_size, g.tau_sim,
                                 g.candidate_pairs_k, cfg.seed, sd,
                                 on_batch=lambda b, n, kind=kind: log.info("groups: %s batch %d/%d", kind, b, n),
                                 previous=previous[1][kind] if previous else None)
        stats[kind] = out[kind].stats
    stats["item"]["genre_purity"] = genre_purity(out["item"].assignment, items)
    sd.write_table("user_groups", out["user"].assignment)
    sd.write_table("item_groups", out["item"].assignment)
    sd.write_table("group_partitions", pl.concat([out[k].partitions for k in ("user", "item")]))
    sd.write_table("group_similarity", pl.concat([out[k].similarity for k in ("user", "item")]))
    sd.write_table(MEMBERS, pl.concat([out[k].members for k in ("user", "item")]))
    return {"user": stats["user"], "item": stats["item"],
            "failed": sum(s["similarity_failed"] for s in stats.values()), "engine": engine.name,
            "model": engine.model, "approximate": engine.approximate, "usage": engine.usage().__dict__,
            "incremental_from": previous[0] if previous else None}


def _summary(meta: dict) -> None:
    for kind in ("user", "item"):
        s = meta[kind]
        log.info("groups %s: %d groups from %d partition groups (%d merged pairs of %d rated); sizes min %d / median "
                 "%.0f / max %d; %d singleton ids; same-group share %.3f", kind, s["groups"], s["partition_groups"],
                 s["merged_pairs"], s["rated_pairs"], s["size_min"], s["size_median"], s["size_max"],
                 s["singleton_ids"], s["same_group_share"])
        log.info("groups %s: %d profiles kept in their previous partition groups, %d partitioned; %d of %d candidate "
                 "pairs' ratings reused%s", kind, s["profiles_kept"], s["profiles_partitioned"],
                 s["similarity_reused"], s["candidate_pairs"],
                 f" (from {meta['incremental_from']})" if meta.get("incremental_from") else "")
    log.info("groups: by %s/%s%s in %.1fs", meta["engine"], meta["model"],
             " (approximation)" if meta["approximate"] else "", meta["seconds_this_run"])
