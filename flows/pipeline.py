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

from lagcl.artifacts import is_complete, read_manifest  # noqa: E402
from lagcl.config import Config, load_config  # noqa: E402
from lagcl.data.formats import check_raw_files  # noqa: E402
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
    return RUNNERS[stage](plan)


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
    cfg = build_config(data, engine, model, rank, ablation, overrides or [])
    plan = make_plan(cfg)
    if cfg.pipeline.runner == "dask":
        done = dask_stages.with_options(task_runner=dask_task_runner(cfg))(plan, from_stage)
    else:
        done = _run_stages(plan, from_stage)
    _print_summary(plan, done)
    _publish_artifacts(plan, done)
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
    return _run_stages(plan, from_stage)


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
    keys = ("valid_recall@20", "test_recall@20", "test_ndcg@20", "test_recall@20_cold", "test_recall@20_warm")
    kept = [r for r in meta.get("levels", []) if r.get("kept")]
    row = {k: (kept[-1].get(k) if kept else None) for k in (*keys, "valid_scope")}
    row["variant"] = " + ".join(r["level"] for r in kept) or "control"
    return row


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
    from lagcl.llm.estimate import estimate, planned_counts, projections_table, scoring_load, variants, variants_table

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


def _publish_artifacts(plan: Plan, done: dict[str, str]) -> None:
    """Per run, in the Prefect UI: a table artifact with the metrics, a Markdown artifact with the report."""
    import polars as pl
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", f"lagcl-{plan.cfg.data.name}".lower())
    metric_rows: list[dict] = []
    lines = [f"# LAGCL4Rec run: {plan.cfg.data.name}", "",
             f"engine `{plan.cfg.engine.name}`, backbone `{plan.cfg.gcl.backbone}`, rank level "
             f"{'on' if plan.cfg.rank.enabled else 'off'}, ablation `{plan.cfg.pipeline.ablation}`, seed {plan.cfg.seed}",
             "", "| stage | seconds | rows | spend (USD) | folder |", "|---|---:|---:|---:|---|"]
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
