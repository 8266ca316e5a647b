"""What changed since the previous finished run of the same configuration (scheduled reruns, issue 14):
`runs.jsonl` holds one line per finished flow run of the dataset, its configuration key, stage fingerprints and
folders. The same configuration is every setting but where the data and the cache are (`configuration_key`):
a run of another backbone, engine or level set is not "the previous run", a rerun on new data is."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import polars as pl

from lagcl.artifacts import atomic_write_bytes, is_complete, read_manifest, read_table
from lagcl.meta import TEST_NDCG, TEST_RECALL, Headline, RequestsMeta, meta_of
from tasks.base import Plan

RUNS = "runs.jsonl"  # one line per finished flow run of the dataset: its stage fingerprints and folders


def runs_path(plan: Plan) -> Path:
    return plan.store.root / plan.cfg.data.name / RUNS


def configuration_key(plan: Plan) -> str:
    """Every setting of the run but the data's files and the cache's place: equal for two runs of the same
    backbone, engine, levels and settings, whatever the data they ran on."""
    dump = plan.cfg.model_dump(mode="json")
    dump.pop("cache_dir", None)
    dump.pop("data", None)
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def configuration_label(plan: Plan) -> str:
    cfg = plan.cfg
    levels = [name for name, on in (("data", "augment" in plan.fingerprints), ("rank", cfg.rank.enabled),
                                    ("rerank", "rerank" in plan.fingerprints)) if on]
    return f"{cfg.gcl.backbone}, engine {cfg.engine.name}, levels {'+'.join(levels) or 'none'}"


def configuration_levels(plan: Plan) -> list[str]:
    """The levels this configuration tries, in the chain's order (what `make compare` groups and sorts by)."""
    return [name for name, on in (("data", "augment" in plan.fingerprints), ("rank", plan.cfg.rank.enabled),
                                  ("rerank", "rerank" in plan.fingerprints)) if on]


def configuration_settings(plan: Plan) -> list[str]:
    """The settings in which this configuration differs from its engine's and backbone's files
    (`key=value`, dotted), e.g. `rank.enabled=False` for RANK=off; the data's files and the cache's place are
    not settings of a configuration."""
    from lagcl.config import load_config
    from lagcl.errors import LagclError

    cfg = plan.cfg
    try:
        base = load_config(engine=cfg.engine.name, model=cfg.gcl.backbone).model_dump(mode="json")
    except (LagclError, OSError):
        return []

    def flat(tree: dict, prefix: str = "") -> dict[str, object]:
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    now, then = (flat({k: v for k, v in d.items() if k not in ("data", "cache_dir")})
                 for d in (cfg.model_dump(mode="json"), base))
    return [f"{k}={json.dumps(now[k]) if not isinstance(now[k], str) else now[k]}" for k in sorted(now)
            if now[k] != then.get(k)]


def previous_run(plan: Plan) -> dict | None:
    """The newest finished run of this configuration (runs of other configurations are passed over)."""
    path = runs_path(plan)
    if not path.is_file():
        return None
    key = configuration_key(plan)
    for line in reversed([ln for ln in path.read_text().splitlines() if ln.strip()]):
        entry = json.loads(line)
        if entry.get("configuration") == key:
            return entry
    return None


def record_run(plan: Plan, done: dict[str, str]) -> None:
    path = runs_path(plan)
    old = path.read_text() if path.is_file() else ""
    entry = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "configuration": configuration_key(plan), "label": configuration_label(plan),
             "backbone": plan.cfg.gcl.backbone, "engine": plan.cfg.engine.name, "levels": configuration_levels(plan),
             "settings": configuration_settings(plan),
             "fingerprints": {s: plan.fingerprints[s] for s in done}, "folders": done,
             "stage_finished_at": {s: (read_manifest(Path(p)) or {}).get("finished_at") for s, p in done.items()}}
    atomic_write_bytes(path, (old + json.dumps(entry, sort_keys=True) + "\n").encode())


def _raw_pairs(folder: Path):
    """(user raw id, item raw id, rating) of a prepare folder's interactions."""
    inter = read_table(folder, "interactions")
    users, items = read_table(folder, "users"), read_table(folder, "items")
    return (inter.join(users.select("user", u=pl.col("raw_id")), on="user")
            .join(items.select("item", i=pl.col("raw_id")), on="item").select("u", "i", "rating"),
            set(users["raw_id"].to_list()), set(items["raw_id"].to_list()))


def what_changed(plan: Plan, done: dict[str, str], previous: dict | None) -> list[str]:
    """Since the previous finished run of the dataset: interactions added/removed (after prepare's filters),
    users/items added, stages recomputed vs reused (Cached), LLM requests sent vs answered from the cache, and
    the headline metric deltas."""
    if previous is None:
        return [f"what changed: first finished run of {plan.cfg.data.name} with this configuration "
                f"({configuration_label(plan)}) in {plan.store.root}"]
    before, stamps = previous.get("fingerprints", {}), previous.get("stage_finished_at", {})
    # reused: the same folder, not written again since (a Cached task whose folder had to be rebuilt is not)
    reused = [s for s in done if before.get(s) == plan.fingerprints[s]
              and (read_manifest(Path(done[s])) or {}).get("finished_at") == stamps.get(s)]
    recomputed = [s for s in done if s not in reused]
    lines = [f"what changed since the previous run of this configuration ({previous.get('finished_at')}): recomputed "
             f"{', '.join(recomputed) or 'nothing'}; reused (Cached) {', '.join(reused) or 'nothing'}"]
    old_prep = Path(previous.get("folders", {}).get("prepare", ""))
    if "prepare" in recomputed and is_complete(old_prep, verify=False):
        (new, nu, ni), (old, ou, oi) = _raw_pairs(Path(done["prepare"])), _raw_pairs(old_prep)
        added, removed = new.join(old, on=["u", "i", "rating"], how="anti"), old.join(new, on=["u", "i", "rating"],
                                                                                    how="anti")
        lines.append(f"  data: {added.height:,} interactions added, {removed.height:,} removed (a changed rating "
                     f"counts as both); users {len(nu - ou):+,} new, {len(ou - nu):,} gone; items {len(ni - oi):+,} "
                     f"new, {len(oi - ni):,} gone")
    sent = cached = 0
    for stage in recomputed:
        u = RequestsMeta.of(meta_of(done[stage])).usage
        sent += u.get("requests", 0)  # answered by the backend in this run (the cached ones are apart)
        cached += u.get("cached", 0)
    lines.append(f"  LLM: {sent:,} requests sent, {cached:,} answered from the response cache (reused stages sent "
                 "none)")
    old_ev = Path(previous.get("folders", {}).get("evaluate", ""))
    if "evaluate" in done and is_complete(old_ev, verify=False):
        a, b = (Headline.of("evaluate", meta_of(f)) for f in (done["evaluate"], old_ev))
        if a is not None and b is not None:
            lines.append(f"  metrics (test): {TEST_RECALL} {a.test_recall:.4f} ({a.test_recall - b.test_recall:+.4f}), "
                         f"{TEST_NDCG} {a.test_ndcg:.4f} ({a.test_ndcg - b.test_ndcg:+.4f})")
    return lines


def latest_runs(store) -> list[dict]:
    """One entry of `runs.jsonl` per configuration: the latest finished run whose stage folders are still
    complete, with `runs` (how many finished runs of that configuration the file holds). Entries written before
    runs recorded their backbone, engine and levels get them from their label."""
    path = store.root / store.dataset / RUNS
    if not path.is_file():
        return []
    entries = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    latest: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for e in entries:
        key = e.get("configuration")
        counts[key] = counts.get(key, 0) + 1
        folders = e.get("folders") or {}
        last = next((folders[s] for s in ("evaluate", "gcl", "control") if s in folders), None)
        if last is not None and is_complete(Path(last), verify=False):
            latest[key] = {**_from_label(e), **e, "last_folder": last}
    return [{**e, "runs": counts[k]} for k, e in latest.items()]


def _from_label(entry: dict) -> dict:
    """backbone, engine and levels from a label `lightgcn, engine embedding, levels data+rank+rerank`."""
    parts = [p.strip() for p in str(entry.get("label", "")).split(",")]
    out = {"backbone": parts[0] if parts else None, "engine": None, "levels": [], "settings": []}
    for p in parts[1:]:
        if p.startswith("engine "):
            out["engine"] = p[len("engine "):]
        elif p.startswith("levels "):
            out["levels"] = [x for x in p[len("levels "):].split("+") if x != "none"]
    return out
