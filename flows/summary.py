"""What a finished run prints and `lagcl compare` shows: the run's summary and every finished run of a dataset
side by side (Table 2 / Table 3 view), read through the stages' typed manifest meta (lagcl/meta.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import polars as pl

from flows.options import build_config
from lagcl.errors import LagclError
from lagcl.chain.text import format_chain
from lagcl.stats import format_p, mark
from tasks.base import REPO_ROOT, Plan, make_plan
from lagcl.meta import (TEST_NDCG, TEST_RECALL, VALID_RECALL, EvaluateMeta, Headline, PrepareMeta, RequestsMeta,
                        meta_of, metric_key)


def print_summary(plan: Plan, done: dict[str, str]) -> None:
    """The terminal summary of a finished run: the data, the chosen model, the headline, the chain, LLM spend,
    the folders and every finished run of the dataset side by side."""
    if "prepare" in done:
        s = PrepareMeta.of(meta_of(done["prepare"])).stats
        print(f"{plan.cfg.data.name}: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions "
              f"({s['positives']:,} positive, {s['negatives']:,} negative), density {s['density']:.4f}; positives "
              f"train/valid/test {s['positives_train']:,}/{s['positives_valid']:,}/{s['positives_test']:,}")
        for line in raw_data_lines(s):
            print(line)
    if "gcl" in done:
        h = Headline.of("gcl", meta_of(done["gcl"]))
        print(f"gcl {h.backbone}: chosen '{h.variant}' (data level {'on' if h.data_level else 'off'}, rank "
              f"level {'on' if h.rank_level else 'off'}): test Recall@20 {h.test_recall:.4f}, NDCG@20 "
              f"{h.test_ndcg:.4f}; control {h.control_test_recall:.4f} / {h.control_test_ndcg:.4f}")
    if "evaluate" in done:
        e = EvaluateMeta.of(meta_of(done["evaluate"]))
        h = e.headline
        for line in evaluate_lines(e, Path(done["evaluate"])):
            print(line)
    chain_from = "evaluate" if "evaluate" in done else ("gcl" if "gcl" in done else None)
    if chain_from:
        print("\n".join(chain_lines(meta_of(done[chain_from]))))
    for line in llm_lines(done):
        print(line)
    for stage, path in done.items():
        print(f"  {stage:<9} {path}")
    if "gcl" in done:
        print(format_comparison(comparison_rows(plan.store), plan.cfg.data.name))


def chain_lines(meta: dict) -> list[str]:
    """The chain as a run's summary prints it (README quotes it: scripts/readme_blocks.py)."""
    return ["what each level bought (vs the control; kept only when it beats the step before it on validation):",
            *format_chain(meta.get("levels", []), final_row(meta))]


def evaluate_lines(e: EvaluateMeta, folder: Path) -> list[str]:
    """The evaluate stage's headline: CF beside the ranking chosen, with where its alpha/tau come from (the
    fallback CF alone when the reranker was left out) and the metrics reranking cannot move."""
    h = e.headline
    how = f"fallback: {e.fallback}" if e.fallback else f"alpha {e.alpha:g}, tau {e.tau:g}"
    lines = [f"evaluate ({e.users:,} users, |C_u| = {e.candidates}): CF test Recall@20 {e.cf_test_recall:.4f} "
             f"NDCG@20 {e.cf_test_ndcg:.4f}; headline {h.variant} ({how}) Recall@20 {h.test_recall:.4f} NDCG@20 "
             f"{h.test_ndcg:.4f}; report: {_shown(folder / 'report.md')}"]
    if e.cannot_move:
        lines.append(f"  {', '.join(m.replace('recall', 'Recall') for m in e.cannot_move)} cannot move: only the top "
                     f"{e.candidates} CF candidates are reranked (rerank.candidates)")
    return lines


def product_lines(plan: Plan, done: dict[str, str]) -> list[str]:
    """The run's last lines: where its product (the recommendations table) is, and the command that shows one
    user's recommendations from this very run."""
    ev = done.get("evaluate")
    table = Path(ev) / "recommendations.parquet" if ev else None
    if table is None or not table.is_file():
        last = next(reversed(done), None)
        return [f"output of the last stage ({last}): {_shown(Path(done[last]))}; try: make status"] if last else []
    rec = meta_of(ev).get("recommendations") or {}
    first = pl.read_parquet(table, columns=["user_raw"], n_rows=1)
    left_out = {"rated": "rated items left out", "positives": "liked items left out"}.get(rec.get("exclude"))
    protocol = f", {left_out}: the '{rec['protocol']}' protocol" if left_out else ""
    lines = [f"recommendations: {_shown(table)} (top {rec.get('n', '?')} for each of {rec.get('users', 0):,} users"
             f"{protocol})"]
    if first.height:
        lines[0] += f"; try: {recommend_command(plan, str(first['user_raw'][0]), min(10, int(rec.get('n') or 10)))}"
    return lines


def recommend_command(plan: Plan, user: str, n: int) -> str:
    """`make recommend` for one user of this run, with the make variables that rebuild this run's configuration
    (the same evaluate fingerprint); where settings beyond those made it, says that its OVERRIDES are needed too."""
    cfg = plan.cfg
    ablation = None if cfg.pipeline.ablation == "none" else cfg.pipeline.ablation
    words = {"DATA": (cfg.data.name, "ml-100k"), "ENGINE": (cfg.engine.name, "embedding"),
             "MODEL": (cfg.gcl.backbone, "lightgcn"), "ABLATION": (ablation, None)}
    make = [f"{k}={v}" for k, (v, default) in words.items() if v != default]
    sets = [f"cache_dir={cfg.cache_dir}"] if cfg.cache_dir != "cache" else []
    command = f"make recommend USER={shlex.quote(user)} N={n}"

    def finds_this_run(rank: str | None) -> bool:
        again = build_config(cfg.data.name, cfg.engine.name, cfg.gcl.backbone, rank, ablation, sets)
        return make_plan(again).fingerprints.get("evaluate") == plan.fingerprints.get("evaluate")

    try:
        rank = next((r for r in (None, "on" if cfg.rank.enabled else "off") if finds_this_run(r)), "?")
    except LagclError:
        rank = "?"
    if rank not in (None, "?"):
        make.append(f"RANK={rank}")
    if sets:
        make.append(f"OVERRIDES={shlex.quote(' '.join(sets))}")
    command = " ".join([command, *make])
    return command + (" (with this run's other settings in RERANKER= / OVERRIDES=)" if rank == "?" else "")


def _shown(path: Path) -> str:
    """A path inside the repository relative to it (cache/ml-100k/...), others as they are."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def raw_data_lines(stats: dict) -> list[str]:
    """What reading the raw files skipped (by reason, with the first places) and merged (duplicate pairs), and
    Steam's Table 1 under both readings of `recommend`, from the prepare manifest's stats."""
    lines = [f"  skipped ({reason}): {e['count']:,} line(s), first at {', '.join(e['first_lines'])}"
             for reason, e in (stats.get("skipped") or {}).items()]
    d = stats.get("duplicates") or {}
    if d.get("pairs_repeated"):
        lines.append(f"  duplicates: {d['pairs_repeated']:,} (user, item) pair(s) given more than once "
                     f"({d['pairs_with_different_ratings']:,} with different ratings), {d['rows_dropped']:,} row(s) "
                     f"merged; {d['rule']}")
    for reading, t in (stats.get("steam_readings") or {}).items():
        lines.append(f"  steam read {reading}: {t['users']:,} users, {t['items']:,} items, {t['interactions']:,} "
                     f"interactions ({t['positives']:,} positive, {t['negatives']:,} negative), density "
                     f"{t['density']:.4f}")
    return lines


def llm_lines(done: dict[str, str]) -> list[str]:
    """Per LLM stage of this run: answered requests beside the HTTP calls behind them, retries by reason, the
    seconds waited before retries, and how many tokens are estimates (replies without usage)."""
    lines = []
    for stage, path in done.items():
        u = RequestsMeta.of(meta_of(path)).usage
        if not u.get("http_calls") and not u.get("requests"):
            continue
        if "http_calls" not in u:  # the offline engine: no HTTP
            continue
        retries = ", ".join(f"{k} {v}" for k, v in (u.get("retries") or {}).items()) or "none"
        est = u.get("estimated_input_tokens", 0) + u.get("estimated_output_tokens", 0)
        lines.append(f"LLM {stage}: {u.get('requests', 0):,} requests answered ({u.get('cached', 0):,} from the cache), "
                     f"{u['http_calls']:,} HTTP calls, retries: {retries}, {u.get('retry_wait_s', 0):.1f} s waited, "
                     f"${u.get('cost_usd', 0.0):.2f}" + (f", {est:,} tokens estimated (replies without usage)"
                                                         if est else ""))
    return lines


def final_row(meta: dict) -> dict:
    """The run's headline numbers in the shape of a chain row."""
    keys = (VALID_RECALL, TEST_RECALL, TEST_NDCG, metric_key("test", segment="cold"), metric_key("test", segment="warm"),
            *(metric_key("test", m, stat=q) for m in ("recall", "ndcg") for q in ("diff", "lo", "hi", "p")))
    kept = [r for r in meta.get("levels", []) if r.get("kept")]
    row = {k: (kept[-1].get(k) if kept else None) for k in (*keys, "valid_scope")}
    row["variant"] = " + ".join(r["level"] for r in kept) or "control"
    return row


LEVELS = ("data", "rank", "rerank")  # the chain's order after the control


def levels_order(levels: list[str]) -> tuple:
    """Configurations by the levels they try: fewer first, then in the chain's order (none, data, rank, rerank,
    data+rank, data+rerank, rank+rerank, data+rank+rerank)."""
    return (len(levels), [LEVELS.index(x) for x in levels if x in LEVELS])


def step_cell(levels: list[dict], level: str, tried: list[str], control: float | None) -> str:
    """One chain step of a run as `make compare` shows it: `kept` or `turned down` with its test Recall@20 change
    against the control, `not trained` (e.g. the data level's precision check), or `-` where the configuration
    does not try the level."""
    rows = [r for r in levels if r.get("level") == level]
    if level not in tried or not rows:
        return "-"
    r = rows[-1]  # the step the gate judged (earlier rows of a level are the strengths it lost to)
    if not r.get("trained") or r.get(TEST_RECALL) is None:
        return "not trained"
    change = f" {(r[TEST_RECALL] - control) / control:+.1%}" if control else ""
    return ("kept" if r.get("kept") else "turned down") + change + mark(r.get(metric_key("test", stat="p")))


def comparison_rows(store) -> list[dict[str, object]]:
    """Table 2 / Table 3 view: one row per configuration of the dataset (its latest finished run in
    `runs.jsonl`, flows/history.py; repeated runs of a configuration are one row, `runs` counts them), sorted by
    backbone, engine, the levels it tries (`levels_order`) and its other settings. Each row shows every step of
    its chain, kept, turned down or not trained, and the run's final test numbers against its control."""
    from flows.history import latest_runs

    rows = []
    for e in latest_runs(store):
        meta = meta_of(e["last_folder"])
        stage = Path(e["last_folder"]).parent.name
        h = Headline.of(stage, meta)
        if h is None:
            continue
        control = h.control_test_recall
        tried = list(e.get("levels") or [])
        gcl = e.get("folders", {}).get("gcl")
        groups = str(meta_of(gcl).get("groups") or "").split(" ")[0] if gcl and "rank" in tried else ""
        rows.append({
            "backbone": e.get("backbone") or h.backbone, "engine": e.get("engine") or "?",
            "levels": "+".join(tried) or "none", "tried": tried, "groups": groups, "settings": " ".join(e.get("settings") or []),
            "control": control, **{lv: step_cell(h.levels, lv, tried, control) for lv in LEVELS},
            "recall@20": h.test_recall, "ndcg@20": h.test_ndcg,
            "vs_control": (h.test_recall - control) / control if control else None,
            "p": last_kept_p(h.levels) if stage != "control" else None,
            "runs": e.get("runs", 1), "finished_at": e.get("finished_at"), "folder": f"{stage}/{Path(e['last_folder']).name}",
        })
    return sorted(rows, key=lambda r: (str(r["backbone"]), str(r["engine"]), levels_order(r["tried"]), r["settings"]))


def last_kept_p(levels: list[dict]) -> float | None:
    """The paired test's p of the run's last kept level against the control (None: no level kept, or a rerank
    level, whose fused ranking has no per-user test)."""
    kept = [r for r in levels if r.get("kept") and r.get("level") != "control"]
    return kept[-1].get(metric_key("test", stat="p")) if kept else None


def format_comparison(rows: list[dict[str, object]], dataset: str) -> str:
    head = (f"finished configurations of {dataset} (one row each: its latest finished run; test, all-rank; each "
            "step kept or turned down on validation, with its test R@20 change against the backbone's control; "
            "final = the levels kept; p of the paired test over users, * < 0.05, ** < 0.01):")
    if not rows:
        return head + "\n  none recorded yet (runs.jsonl is written when a `make pipeline` run finishes)"
    lines = [head, f"  {'backbone':<16} {'engine':<12} {'levels tried':<17} {'groups':<8} {'control':>7} {'+ data':<18} "
             f"{'+ rank':<18} {'+ rerank':<18} {'Recall@20':>9} {'NDCG@20':>8} {'vs ctrl':>9} {'p':>7} {'runs':>4}  "
             "folder under cache/<dataset>  settings"]
    for r in rows:
        p = r.get("p")
        vs = (f"{r['vs_control']:+.1%}" + (mark(p) if p is not None else "")) if r["vs_control"] is not None else "-"
        ctrl = f"{r['control']:.4f}" if r.get("control") is not None else "-"
        lines.append(f"  {r['backbone']!s:<16} {r['engine']!s:<12} {r['levels']:<17} {r.get('groups', ''):<8} {ctrl:>7} {r['data']:<18} "
                     f"{r['rank']:<18} {r['rerank']:<18} {r['recall@20']:>9.4f} {r['ndcg@20']:>8.4f} {vs:>9} "
                     f"{format_p(p):>7} {r['runs']:>4}  {r['folder']}  {r['settings']}".rstrip())
    return "\n".join(lines)
