"""The `lagcl-pipeline` Prefect flow: one run = one dataset + one configuration.

Each stage is a Prefect task whose cache key is the stage fingerprint, so an unchanged stage shows
as Cached and a rerun resumes at the first incomplete stage. A task returns a StageRef (a folder
path), never data. A cached StageRef whose folder is no longer complete is recomputed.

    python -m flows.pipeline --data ml-100k --engine embedding --model lightgcn --set gcl.lr=0.002
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_HOME", str(REPO_ROOT / "cache" / "prefect"))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# the temporary server migrates a fresh SQLite database on first start: on a loaded 2-core machine that
# can exceed Prefect's default 20 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# the stages log through the "lagcl" logger: route it through Prefect's handlers (terminal and UI)
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "lagcl")
# pipeline.runner=dask: Dask's scheduler and workers log every connection at INFO; keep their warnings only
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.states import Failed  # noqa: E402

from lagcl.artifacts import is_complete, read_manifest  # noqa: E402
from lagcl.config import Config, load_config  # noqa: E402
from lagcl.data.readers import check_raw_files  # noqa: E402
from lagcl.errors import LagclError  # noqa: E402
from tasks import control as control_stage  # noqa: E402
from tasks import gcl as gcl_stage  # noqa: E402
from tasks import augment as augment_stage  # noqa: E402
from tasks import groups as groups_stage  # noqa: E402
from tasks import evaluate as evaluate_stage  # noqa: E402
from tasks import prepare as prepare_stage  # noqa: E402
from tasks import rerank as rerank_stage  # noqa: E402
from tasks import profiles as profiles_stage  # noqa: E402
from tasks.base import STAGES, Plan, StageRef, make_plan  # noqa: E402



class _NoFailedStateEcho(logging.Filter):
    """Drops Prefect's "Task run failed with state: Failed(...)" record for a stage that returned a Failed state
    (run_stage below): it repeats the message of the "Finished in state Failed(...)" line beside it and, being
    logged with exc_info outside any exception, ends in a stray "NoneType: None" line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task run failed with state:")


logging.getLogger("prefect.task_runs").addFilter(_NoFailedStateEcho())

RUNNERS = {
    "prepare": prepare_stage.run,
    "profiles": profiles_stage.run,
    "augment": augment_stage.run,
    "groups": groups_stage.run,
    "control": control_stage.run,
    "gcl": gcl_stage.run,
    "rerank": rerank_stage.run,
    "evaluate": evaluate_stage.run,
}


def _stage_key(context, parameters) -> str:  # Prefect cache_key_fn signature
    """The stage fingerprint, plus where its folder is: two cache roots never share a result."""
    stage, plan = parameters["stage"], parameters["plan"]
    where = hashlib.sha256(plan.ref(stage).path.encode()).hexdigest()[:8]
    return f"lagcl-{stage}-{plan.fingerprints[stage]}-{where}"


@task(name="stage", cache_key_fn=_stage_key, persist_result=True, task_run_name="{stage}")
def run_stage(stage: str, plan: Plan) -> StageRef:
    try:
        return RUNNERS[stage](plan)
    except LagclError as exc:
        # a fault the user can fix (bad data, a locked stage): the task ends Failed with the one-line message
        # that `--dry-run` prints, and Prefect's engine logs no traceback for it (a returned state, not a raise)
        return Failed(message=str(exc), data=exc)


def build_config(data: str, engine: str, model: str, rank: str | None, ablation: str | None,
                 overrides: list[str], dry_run: bool = False) -> Config:
    sets = list(overrides)
    if rank is not None:
        sets.append(f"rank.enabled={'true' if rank in ('on', 'true', '1') else 'false'}")
    if ablation:
        sets.append(f"pipeline.ablation={ablation}")
    if dry_run:
        sets.append("llm.dry_run=true")
    return load_config(data=data, engine=engine, model=model, overrides=sets)


@flow(name="lagcl-pipeline", log_prints=True)
def lagcl_pipeline(data: str = "ml-100k", engine: str = "embedding", model: str = "lightgcn",
                   rank: str | None = None, ablation: str | None = None, from_stage: str | None = None,
                   overrides: list[str] | None = None) -> dict[str, str]:
    try:
        cfg = build_config(data, engine, model, rank, ablation, overrides or [])
        plan = make_plan(cfg)
        if cfg.pipeline.runner == "dask":
            done = dask_stages.with_options(task_runner=dask_task_runner(cfg))(plan, from_stage)
        else:
            done = _run_stages(plan, from_stage)
    except LagclError as exc:
        return Failed(message=str(exc), data=exc)  # the flow run's message, without a traceback
    changes = what_changed(plan, done, _previous_run(plan))
    _print_summary(plan, done)
    print("\n".join(changes))
    _publish_artifacts(plan, done, changes)
    _record_run(plan, done)
    return done


def _run_stages(plan: Plan, from_stage: str | None) -> dict[str, str]:
    """Each enabled stage in order, as a cached task; returns stage -> folder."""
    logger = get_run_logger()
    order = [s for s in plan.fingerprints if s in RUNNERS]
    missing = [s for s in plan.fingerprints if s not in RUNNERS]
    if missing:
        logger.warning("stages not built in this version, skipped: %s", ", ".join(missing))
    if from_stage and from_stage not in order:
        raise LagclError(f"FROM={from_stage} is not a stage of this run; stages: {', '.join(order)}")
    forced = set(order[order.index(from_stage):]) if from_stage else set()
    done: dict[str, str] = {}
    for i, stage in enumerate(order):
        if stage in forced:
            _discard(plan, stage)
        state = run_stage.with_options(refresh_cache=stage in forced)(stage, plan, return_state=True)
        ref = state.result()
        manifest = read_manifest(Path(ref.path))
        if manifest is None or not is_complete(Path(ref.path)):
            # Prefect remembered a result whose folder was removed or no longer matches its checksums
            logger.warning("%s: cached output is missing or corrupt; recomputing it", stage)
            ref = run_stage.with_options(refresh_cache=True)(stage, plan)
        elif state.is_completed() and state.name == "Cached" and manifest.get("meta", {}).get("failed"):
            # a finished stage with failed requests: a rerun asks only those again, and every stage after
            # it is recomputed on the mended output
            logger.info("%s: retrying %d failed request(s) of the last run", stage, manifest["meta"]["failed"])
            ref = run_stage.with_options(refresh_cache=True)(stage, plan)
            if (read_manifest(Path(ref.path)) or {}).get("finished_at") != manifest.get("finished_at"):
                forced |= set(order[i + 1:])
        done[stage] = ref.path
    return done


@flow(name="lagcl-stages-dask", log_prints=True)
def dask_stages(plan: Plan, from_stage: str | None = None) -> dict[str, str]:
    """The stages of a `pipeline.runner=dask` run: a subflow whose task runner is prefect-dask's, so the
    stages' LLM and scoring fan-out (tasks.base.semantic_engine) reaches the cluster's workers."""
    try:
        return _run_stages(plan, from_stage)
    except LagclError as exc:
        return Failed(message=str(exc), data=exc)


def dask_task_runner(cfg: Config):
    """DaskTaskRunner on `pipeline.dask_address`, or on a LocalCluster of `pipeline.dask_workers` processes."""
    from prefect_dask import DaskTaskRunner

    p = cfg.pipeline
    if p.dask_address:
        return DaskTaskRunner(address=p.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": p.dask_workers, "threads_per_worker": p.dask_threads_per_worker,
                                          "processes": True, "dashboard_address": None})


def _discard(plan: Plan, stage: str) -> None:
    """FROM=<stage>: remove the stage's folder so it recomputes from scratch. LLM answers stay in the
    response cache (cache/llm), so forcing a stage never pays twice for the same request."""
    folder = Path(plan.ref(stage).path)
    if folder.exists():
        with plan.store.stage(stage, plan.fingerprints[stage]):  # refuses while another run writes it
            pass
        shutil.rmtree(folder)


def _print_summary(plan: Plan, done: dict[str, str]) -> None:
    if "prepare" in done:
        s = read_manifest(Path(done["prepare"]))["meta"]["stats"]
        print(f"{plan.cfg.data.name}: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions "
              f"({s['positives']:,} positive, {s['negatives']:,} negative), density {s['density']:.4f}; positives "
              f"train/valid/test {s['positives_train']:,}/{s['positives_valid']:,}/{s['positives_test']:,}")
        for line in raw_data_lines(s):
            print(line)
    if "gcl" in done:
        m = read_manifest(Path(done["gcl"]))["meta"]
        print(f"gcl {m['backbone']}: chosen '{m['variant']}' (data level {'on' if m['data_level'] else 'off'}, rank "
              f"level {'on' if m['rank_level'] else 'off'}): test Recall@20 {m['test_recall@20']:.4f}, NDCG@20 "
              f"{m['test_ndcg@20']:.4f}; control {m['control_test_recall@20']:.4f} / {m['control_test_ndcg@20']:.4f}")
    if "evaluate" in done:
        m = read_manifest(Path(done["evaluate"]))["meta"]
        print(f"evaluate ({m['users']:,} users, |C_u| = {m['candidates']}): CF test Recall@20 "
              f"{m['cf_test_recall@20']:.4f} NDCG@20 {m['cf_test_ndcg@20']:.4f}; {m['headline_variant']} (alpha "
              f"{m['alpha']}, tau {m['tau']}) Recall@20 {m['test_recall@20']:.4f} NDCG@20 {m['test_ndcg@20']:.4f}; "
              f"report: {Path(done['evaluate']) / 'report.md'}")
    chain_from = "evaluate" if "evaluate" in done else ("gcl" if "gcl" in done else None)
    if chain_from:
        from lagcl.gate import format_chain

        m = read_manifest(Path(done[chain_from]))["meta"]
        print("what each level bought (vs the control; kept only when it beats the step before it on validation):")
        print("\n".join(format_chain(m.get("levels", []), _final_row(m))))
    for line in _llm_lines(done):
        print(line)
    for stage, path in done.items():
        print(f"  {stage:<9} {path}")
    if "gcl" in done:
        from flows.cli import comparison_rows, format_comparison

        print(format_comparison(comparison_rows(plan.store), plan.cfg.data.name))


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


def _llm_lines(done: dict[str, str]) -> list[str]:
    """Per LLM stage of this run: answered requests beside the HTTP calls behind them, retries by reason, the
    seconds waited before retries, and how many tokens are estimates (replies without usage)."""
    lines = []
    for stage, path in done.items():
        u = ((read_manifest(Path(path)) or {}).get("meta", {}).get("usage") or {})
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


def _final_row(meta: dict) -> dict:
    """The run's headline numbers in the shape of a chain row."""
    keys = ("valid_recall@20", "test_recall@20", "test_ndcg@20", "test_recall@20_cold", "test_recall@20_warm",
            *(f"test_{m}@20_{q}" for m in ("recall", "ndcg") for q in ("diff", "lo", "hi", "p")))
    kept = [r for r in meta.get("levels", []) if r.get("kept")]
    row = {k: (kept[-1].get(k) if kept else None) for k in (*keys, "valid_scope")}
    row["variant"] = " + ".join(r["level"] for r in kept) or "control"
    return row


# --- what changed since the previous finished run of the dataset (scheduled reruns, issue 14) ---------------
RUNS = "runs.jsonl"  # one line per finished flow run of the dataset: its stage fingerprints and folders


def _runs_path(plan: Plan) -> Path:
    return plan.store.root / plan.cfg.data.name / RUNS


def _previous_run(plan: Plan) -> dict | None:
    import json

    path = _runs_path(plan)
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def _record_run(plan: Plan, done: dict[str, str]) -> None:
    import json
    import time

    from lagcl.artifacts import atomic_write_bytes

    path = _runs_path(plan)
    old = path.read_text() if path.is_file() else ""
    entry = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "fingerprints": {s: plan.fingerprints[s] for s in done}, "folders": done,
             "stage_finished_at": {s: (read_manifest(Path(p)) or {}).get("finished_at") for s, p in done.items()}}
    atomic_write_bytes(path, (old + json.dumps(entry, sort_keys=True) + "\n").encode())


def _raw_pairs(folder: Path):
    """(user raw id, item raw id, rating) of a prepare folder's interactions."""
    import polars as pl

    from lagcl.artifacts import read_table

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
        return [f"what changed: first finished run of {plan.cfg.data.name} in {plan.store.root}"]
    before, stamps = previous.get("fingerprints", {}), previous.get("stage_finished_at", {})
    # reused: the same folder, not written again since (a Cached task whose folder had to be rebuilt is not)
    reused = [s for s in done if before.get(s) == plan.fingerprints[s]
              and (read_manifest(Path(done[s])) or {}).get("finished_at") == stamps.get(s)]
    recomputed = [s for s in done if s not in reused]
    lines = [f"what changed since the run of {previous.get('finished_at')}: recomputed "
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
        u = ((read_manifest(Path(done[stage])) or {}).get("meta", {}).get("usage") or {})
        sent += u.get("requests", 0)  # answered by the backend in this run (the cached ones are apart)
        cached += u.get("cached", 0)
    lines.append(f"  LLM: {sent:,} requests sent, {cached:,} answered from the response cache (reused stages sent "
                 "none)")
    old_ev = Path(previous.get("folders", {}).get("evaluate", ""))
    if "evaluate" in done and is_complete(old_ev, verify=False):
        a, b = read_manifest(Path(done["evaluate"]))["meta"], read_manifest(old_ev)["meta"]
        lines.append("  metrics (test): " + ", ".join(
            f"{k} {a[k]:.4f} ({a[k] - b[k]:+.4f})" for k in ("test_recall@20", "test_ndcg@20") if k in a and k in b))
    return lines


def _local_server_settings() -> dict:
    """Runs go to the `make server` UI when it is up; otherwise Prefect starts a temporary server."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL"):
        return {}
    import urllib.request

    url = "http://127.0.0.1:4200/api"
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=0.5) as resp:
            if resp.status == 200:
                return {PREFECT_API_URL: url}
    except OSError:
        pass
    return {}


def _dry_run(plan: Plan) -> int:
    """DRY_RUN=1: prepare the data (no LLM involved), then print what each LLM stage would cost."""
    from lagcl.artifacts import read_table
    from tasks.estimate import estimate, planned_counts, projections_table, scoring_load, variants, variants_table

    ref = prepare_stage.run(plan)
    interactions = read_table(Path(ref.path), "interactions")
    n_users, n_items = (read_manifest(Path(ref.path))["meta"]["stats"][k] for k in ("users", "items"))
    cfg = plan.cfg
    counts = planned_counts(interactions, n_users, n_items, cfg)
    if cfg.engine.name == "embedding":
        print(f"engine 'embedding' runs offline on this machine and costs nothing; for an LLM engine's "
              f"price use ENGINE=anthropic|openai|vllm|transformers. Requests it would make: {counts}")
        return 0
    sizes = dict(items_per_call=cfg.augment.items_per_call, group_batch=cfg.groups.batch_size,
                 target_group_size=cfg.groups.target_group_size, history=cfg.profiles.history)
    load = scoring_load(interactions, n_items, cfg)
    report = estimate(counts, cfg.engine, cfg.llm, cfg.data.domain, load=load, **sizes)
    for stage, cap in sorted(cfg.llm.stage_budget_usd.items()):
        print(f"llm.stage_budget_usd.{stage}=${cap:,.2f}: estimated ${report.stage_usd(stage):,.2f}"
              + (" -- over: the stage will stop there (resumable)" if report.stage_usd(stage) > cap else ""))
    if cfg.llm.budget_usd is not None and report.total_usd > cfg.llm.budget_usd:
        print(f"llm.budget_usd=${cfg.llm.budget_usd:,.2f} is below the estimate: the run will stop there (resumable)")
    print()
    print(variants_table(variants(counts, cfg.engine, cfg.llm, cfg.data.domain, load=load, **sizes)))
    print()
    print(projections_table(cfg, load.cold_users / max(1, n_users), **sizes))
    print("dry run: no LLM call was made")
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # validate before starting Prefect, so a typo costs nothing
        cfg = build_config(args.data, args.engine, args.model, args.rank, args.ablation, args.overrides,
                           args.dry_run)
        plan = make_plan(cfg)
        if not plan.store.is_complete("prepare", plan.fingerprints["prepare"]):
            check_raw_files(cfg.data, REPO_ROOT)
        if args.dry_run:
            return _dry_run(plan)
        from prefect.settings import temporary_settings

        with temporary_settings(_local_server_settings()):
            lagcl_pipeline(data=args.data, engine=args.engine, model=args.model, rank=args.rank,
                           ablation=args.ablation, from_stage=args.from_stage, overrides=args.overrides)
    except LagclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _publish_artifacts(plan: Plan, done: dict[str, str], changes: list[str] | None = None) -> None:
    """Per run, in the Prefect UI: a table artifact with the metrics, a Markdown artifact with the report."""
    import polars as pl
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", f"lagcl-{plan.cfg.data.name}".lower())
    metric_rows: list[dict] = []
    lines = [f"# LAGCL4Rec run: {plan.cfg.data.name}", "",
             f"engine `{plan.cfg.engine.name}`, backbone `{plan.cfg.gcl.backbone}`, rank level "
             f"{'on' if plan.cfg.rank.enabled else 'off'}, ablation `{plan.cfg.pipeline.ablation}`, seed {plan.cfg.seed}",
             "", "| stage | seconds | rows | spend (USD) | folder |", "|---|---:|---:|---:|---|"]
    if changes:
        lines[4:4] = ["## What changed", "", "```", *changes, "```", ""]
    pngs: list[Path] = []
    for stage, path in done.items():
        folder = Path(path)
        manifest = read_manifest(folder) or {}
        usage = manifest.get("meta", {}).get("usage") or {}
        lines.append(f"| {stage} | {manifest.get('seconds', 0):.1f} | {sum(manifest.get('rows', {}).values()):,} | "
                     f"{usage.get('cost_usd', 0.0):.2f} | `{folder}` |")
        if (folder / "metrics.parquet").is_file():
            for row in pl.read_parquet(folder / "metrics.parquet").iter_rows(named=True):
                metric_rows.append({"stage": stage, **{k: (round(v, 5) if isinstance(v, float) else v)
                                                       for k, v in row.items()}})
        pngs += sorted(folder.glob("*.png"))
    report = Path(done["evaluate"]) / "report.md" if "evaluate" in done else None
    if report is not None and report.is_file():
        lines += ["", report.read_text()]
    elif "gcl" in done:
        from lagcl.gate import format_chain

        levels = (read_manifest(Path(done["gcl"])) or {}).get("meta", {}).get("levels", [])
        lines += ["", "## What each level bought", "", "```", *format_chain(levels), "```"]
    if pngs:
        lines += ["", "## Plots", *[f"- [{p.name}](file://{p})" for p in pngs]]
    if metric_rows:
        create_table_artifact(key=f"{key}-metrics", table=metric_rows,
                              description=f"metrics of {plan.cfg.data.name}")
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines),
                             description=f"report of {plan.cfg.data.name}")


def main(argv: list[str] | None = None) -> int:
    from flows.cli import add_run_options

    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
