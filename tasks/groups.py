"""Stage 3: semantic groups of users and of items (eq. 5-6).

With `groups.incremental` the stage starts from the latest finished groups result of the same dataset made by
the same engine, model, seed and group settings (a folder of this stage under the dataset's cache folder, never
anything outside it): unchanged profiles keep their partition groups and only the rest is asked
(lagcl/groups.py). Without such a result it runs as a full one.

With `groups.source: files` a kind whose file is given is read from it (lagcl/group_files.py) and the other kind,
if any, is grouped by the engine as usual; with both files the stage reads neither the profiles stage nor the
engine (tasks/stages.py `needs_if`), and it never runs incrementally. Both files are read and checked before
anything is written or asked."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lagcl.artifacts import has_table, is_complete, read_manifest, read_table
from lagcl.errors import ArtifactError, DataError
from lagcl.group_files import import_groups, title_year_map
from lagcl.groups import PreviousGroups, build_groups, genre_purity
from lagcl.meta import RequestsMeta
from lagcl.profiles import raw_labels, read_profiles
from lagcl.semantic import SemanticEngine
from tasks.base import Plan, StageRef, log, run_stage, stage_engine

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
    if not plan.cfg.groups.incremental or plan.cfg.groups.source != "engine":
        return None

    def settings(groups: dict) -> dict | None:
        # as hashed (lagcl.config GroupsConfig.hash_payload): folders from before a setting existed still match
        try:
            payload = type(plan.cfg.groups).model_validate(groups).hash_payload()
        except ValueError:
            return None
        payload.pop("incremental", None)
        return payload

    want = settings(plan.cfg.groups.model_dump(mode="json"))
    found = []
    for folder in plan.store.iter_stage_dirs(STAGE):
        manifest = read_manifest(folder)
        if folder == here or manifest is None or not has_table(folder, MEMBERS) or pinned not in (None, folder.name):
            continue
        meta, config = manifest.get("meta", {}), manifest.get("config", {})
        requests = RequestsMeta.of(meta)
        if (requests.failed or meta.get("source", "engine") != "engine"
                or (requests.engine, requests.model) != (engine.name, engine.model)
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


def imported(plan: Plan) -> dict:
    """The kinds `groups.source: files` reads, each checked against prepare's tables (lagcl/group_files.py);
    a fault is a DataError before the stage writes anything."""
    g = plan.cfg.groups
    files = plan.group_inputs
    tables = {"user": plan.input("prepare", "users"), "item": plan.input("prepare", "items")}
    out = {}
    for kind in ("user", "item"):
        if f"{kind}_file" not in files:
            continue
        id_map = (title_year_map(Path(files["id_map_items"].path), tables["item"])
                  if kind == "item" and g.id_map == "title_year" else None)
        out[kind] = import_groups(Path(files[f"{kind}_file"].path), kind, tables[kind], g.lenient, id_map)
        # the fingerprint holds the digest taken when the run was planned: what is read must be that file
        if out[kind].stats["sha256"] != files[f"{kind}_file"].sha256:
            raise DataError(f"{files[f'{kind}_file'].path} changed after this run was planned; run it again")
    return out


def _build(plan: Plan, sd) -> dict:
    items = plan.input("prepare", "items")
    out = imported(plan)
    stats = {kind: kg.stats for kind, kg in out.items()}
    if len(out) == 2:  # nothing of the engine's: no profiles read, nothing asked
        return write_groups(plan, sd, out, stats, items, engine=None, previous=None)
    # the profiles/augment engine path: Dask fan-out included
    return _group(plan, sd, stage_engine(plan, STAGE), out, stats, items)


def _group(plan: Plan, sd, engine: SemanticEngine, out: dict, stats: dict, items: pl.DataFrame) -> dict:
    """The kinds the engine groups (eq. 5-6), incrementally from a previous result where one matches."""
    cfg = plan.cfg
    g = cfg.groups
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
    for kind in g.engine_kinds:
        profiles = read_profiles(plan.input("profiles", f"{kind}_profiles"), kind, labels[kind])
        out[kind] = build_groups(engine, kind, profiles, g.batch_size, g.target_group_size, g.tau_sim,
                                 g.candidate_pairs_k, cfg.seed, sd,
                                 on_batch=lambda b, n, kind=kind: log.info("groups: %s batch %d/%d", kind, b, n),
                                 previous=previous[1][kind] if previous else None)
        stats[kind] = {**out[kind].stats, "source": "engine"}
    return write_groups(plan, sd, out, stats, items, engine, previous)


def write_groups(plan: Plan, sd, out: dict, stats: dict, items: pl.DataFrame, engine: SemanticEngine | None,
               previous) -> dict:
    """Write the stage's tables (the same ones whichever source made each kind) and return its meta."""
    stats["item"]["genre_purity"] = genre_purity(out["item"].assignment, items)
    sd.write_table("user_groups", out["user"].assignment)
    sd.write_table("item_groups", out["item"].assignment)
    sd.write_table("group_partitions", pl.concat([out[k].partitions for k in ("user", "item")]))
    sd.write_table("group_similarity", pl.concat([out[k].similarity for k in ("user", "item")]))
    sd.write_table(MEMBERS, pl.concat([out[k].members for k in ("user", "item")]))
    files = {k: {"file": s["file"], "sha256": s["sha256"], "format": s["format"]}
             for k, s in stats.items() if s.get("source") == "files"}
    failed = sum(s["similarity_failed"] for s in stats.values())
    return {"user": stats["user"], "item": stats["item"],
            "source": plan.cfg.groups.source, "files": files,
            **(RequestsMeta.of_engine(engine, failed) if engine else RequestsMeta(failed, {}, "files")).as_meta(),
            "incremental_from": previous[0] if previous else None}


def source_label(meta: dict) -> str | None:
    """Which group source ran, as the stage's summary, the gcl meta's `groups` (the chain) and `lagcl compare`
    (its first word) name it: "engine embedding/all-MiniLM-L6-v2" or "files (item item_group.txt sha 1a2b3c4d..;
    user engine ...)". None without a finished groups stage."""
    if not meta:
        return None
    files = meta.get("files") or {}
    engine = f"engine {meta.get('engine')}/{meta.get('model')}"
    if not files:
        return engine
    parts = [f"{k} {files[k]['file']} sha {files[k]['sha256'][:8]}.." if k in files else f"{k} {engine}"
             for k in ("user", "item")]
    return f"files ({'; '.join(parts)})"


def _summary(meta: dict) -> None:
    for kind in ("user", "item"):
        s = meta[kind]
        if s.get("source") == "files":
            faults = ", ".join(f"{f['count']} {c}" for c, f in s["faults"].items() if f["count"]) or "none"
            log.info("groups %s: from %s (%s, sha256 %s..): %d of %d %ss in %d groups (sizes min %d / median %.0f "
                     "/ max %d); faults %s%s", kind, s["file"], s["format"], s["sha256"][:8], s["grouped"], s["of"],
                     kind, s["groups"], s["size_min"], s["size_median"], s["size_max"], faults,
                     " (lenient: skipped)" if s["lenient"] and faults != "none" else "")
            if s.get("mapping"):
                m = s["mapping"]
                log.info("groups %s: id map by title + year through %s: %d of the dataset's %d items matched (%.1f%%), "
                         "%d file entries without a match", kind, m["file"], m["matched"], m["items"],
                         100 * m["match_rate_of_items"], m["entries_unmatched"])
            continue
        log.info("groups %s: %d groups from %d partition groups (%d merged pairs of %d rated); sizes min %d / median "
                 "%.0f / max %d; %d singleton ids; same-group share %.3f", kind, s["groups"], s["partition_groups"],
                 s["merged_pairs"], s["rated_pairs"], s["size_min"], s["size_median"], s["size_max"],
                 s["singleton_ids"], s["same_group_share"])
        log.info("groups %s: %d profiles kept in their previous partition groups, %d partitioned; %d of %d candidate "
                 "pairs' ratings reused%s", kind, s["profiles_kept"], s["profiles_partitioned"],
                 s["similarity_reused"], s["candidate_pairs"],
                 f" (from {meta['incremental_from']})" if meta.get("incremental_from") else "")
    log.info("groups: %s%s in %.1fs", source_label(meta), " (approximation)" if meta["approximate"] else "",
             meta["seconds_this_run"])
