"""LLM requests of a rerun after new data vs a full run (issue 14), against the local protocol server.

The LLM stages (profiles, augment, groups) of ML-100K with the openai engine, talking to lagcl/llm/protocol_server.py
(`pipeline_model`: a valid, deterministic reply to every prompt), at the chaos harness's `ci` scale for the
LLM stages. Three runs, counting the model requests that reach the server:
  1. a full run on ML-100K (fresh cache),
  2. `--new` ratings appended to the same raw file, the same command again (the response cache of run 1),
  3. a full run on the new data with a fresh cache (the cost the rerun is compared with).

    PYTHONPATH=$PWD .venv/bin/python -m scripts.bench_rerun_llm [--new 3000] [--users N] [--set KEY=VALUE] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lagcl.data.fetch import ensure_ml100k
from lagcl.llm.protocol_server import LLMServer, pipeline_model
from scripts.rerun_churn import append_ratings

REPO = Path(__file__).resolve().parent.parent

LLM_SCALE = ["augment.cold_threshold=6", "augment.n_candidates=128", "augment.items_per_call=16",
             "augment.shard_size=16", "profiles.shard_size=128", "groups.batch_size=100"]
OFF = ("control", "gcl", "rerank", "evaluate")
KEY_ENV = "LAGCL_BENCH_API_KEY"


def run(server: LLMServer, raw: Path, cache: Path, log: Path, extra: list[str] = ()) -> tuple[int, float]:
    sets = [f"cache_dir={cache}", f"data.path={raw}", f"engine.base_url={server.base_url}/v1",
            "engine.model=bench-model", f"engine.api_key_env={KEY_ENV}", "engine.requests_per_minute=null",
            *LLM_SCALE, *[f"pipeline.stages.{s}=false" for s in OFF], *extra]
    args = [sys.executable, "-m", "flows.pipeline", "--engine", "openai"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PREFECT_HOME": str(cache.parent / "prefect"), "DO_NOT_TRACK": "1", KEY_ENV: "unused",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    before = len(server.model_calls())
    t = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"run failed (exit {rc}); see {log}")
    return len(server.model_calls()) - before, time.perf_counter() - t


def stage_requests(cache: Path) -> list[tuple[str, int, int]]:
    """(stage, requests sent, answered from the cache) of the latest finished folder of each LLM stage."""
    out = []
    for stage in ("profiles", "augment", "groups"):
        manifests = [json.loads(p.read_text()) for p in (cache / "ml-100k" / stage).glob("*/manifest.json")]
        usage = max(manifests, key=lambda m: m["finished_at"])["meta"]["usage"]
        out.append((stage, usage["requests"], usage["cached"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=3000)
    ap.add_argument("--users", type=int, default=None, help="new ratings from this many users only")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rerun-llm"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for all three runs, e.g. profiles.item_rating_counts=coarse")
    args = ap.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    raw = work / "raw"
    shutil.copytree(ensure_ml100k(REPO / "cache" / "raw" / "ml-100k"), raw)
    with LLMServer(pipeline_model) as server:
        full, t1 = run(server, raw, work / "a" / "cache", work / "1-full.log", args.overrides)
        print(f"1. full run: {full:,} model requests ({t1:.0f} s)", flush=True)
        append_ratings(raw / "ml-100k.inter", args.new, users=args.users)
        rerun, t2 = run(server, raw, work / "a" / "cache", work / "2-rerun.log", args.overrides)
        print(f"2. rerun after {args.new:,} new ratings: {rerun:,} model requests ({t2:.0f} s)", flush=True)
        fresh, t3 = run(server, raw, work / "b" / "cache", work / "3-full-new.log", args.overrides)
        print(f"3. full run on the new data: {fresh:,} model requests ({t3:.0f} s)", flush=True)
        print(f"rerun / full run on the new data: {rerun / fresh:.1%}")
        print("rerun by stage (sent / answered from the cache):", ", ".join(
            f"{stage} {sent:,} / {cached:,}" for stage, sent, cached in stage_requests(work / "a" / "cache")))
    for log in ("2-rerun.log",):
        lines = [ln for ln in (work / log).read_text().splitlines() if "what changed" in ln or ln.startswith("  ")]
        print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
