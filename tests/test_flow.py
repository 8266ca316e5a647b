"""The pipeline flow through a real (temporary) Prefect server, in a subprocess like `make pipeline`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from lagcl.artifacts import is_complete, read_table
from lagcl.data.fetch import ensure_ml100k

ONLY_PREPARE = [f"pipeline.stages.{s}=false" for s in ("profiles", "augment", "groups", "control", "gcl", "rerank",
                                                           "evaluate")]


def run_pipeline(repo: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    args = [sys.executable, "-m", "flows.pipeline", "--set", f"cache_dir={tmp / 'cache'}",
            "--set", f"data.path={repo / 'cache' / 'raw' / 'ml-100k'}"]
    for s in (*ONLY_PREPARE, *extra):
        args += ["--set", s]
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ml100k(repo_root):
    return ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k")


def test_pipeline_prepares_ml100k_then_reports_the_stage_cached_on_rerun(repo_root, tmp_path, ml100k):
    first = run_pipeline(repo_root, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout + first.stderr
    assert "938 users, 1,008 items" in out and "54,413 positive" in out
    manifests = list((tmp_path / "cache" / "ml-100k" / "prepare").glob("*/manifest.json"))
    assert len(manifests) == 1
    stats = json.loads(manifests[0].read_text())["meta"]["stats"]
    assert (stats["users"], stats["items"], stats["positives"]) == (938, 1008, 54413)
    # the run ends naming what it made (here prepare's folder: the later stages are off) and what to run next
    assert f"output of the last stage (prepare): {manifests[0].parent}; try: make status" in out

    second = run_pipeline(repo_root, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Task run 'prepare' - Finished in state Cached" in second.stdout + second.stderr


def test_pipeline_rejects_a_config_typo_before_starting_any_work(repo_root, tmp_path, ml100k):
    proc = run_pipeline(repo_root, tmp_path, "gcl.lrr=0.1")
    assert proc.returncode == 2
    assert "unknown key 'gcl.lrr'" in proc.stderr and "did you mean 'lr'" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_missing_dataset_files_are_named_with_where_to_put_them_before_prefect_starts(repo_root, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--data", "yelp", "--set", f"data.path={tmp_path / 'yelp'}",
         "--set", f"cache_dir={tmp_path / 'cache'}"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "yelp_academic_dataset_review.json" in proc.stderr
    assert "yelp_academic_dataset_business.json" in proc.stderr
    assert str(tmp_path / "yelp") in proc.stderr
    assert "yelp.com/dataset" in proc.stderr
    assert "Starting temporary server" not in proc.stdout + proc.stderr


def test_dry_run_prints_the_llm_cost_per_stage_and_makes_no_call(repo_root, tmp_path, ml100k):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OPENAI_API_KEY": "unused-in-a-dry-run"}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--engine", "openai", "--dry-run",
         "--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"data.path={ml100k}",
         "--set", "engine.base_url=http://127.0.0.1:9/v1"],  # nothing listens there: a call would fail
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "LLM cost estimate for model" in out and "dry run: no LLM call was made" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.split()[:1] in (["profiles"], ["augment"])}
    assert rows["profile_user"][2] == "938" and rows["profile_item"][2] == "1,008"
    assert int(rows["score_pos"][2].replace(",", "")) > 0
    # gpt-4o-mini is priced and no budget is set: the dry run says a real run would stop, and what to set
    assert "llm.budget_usd is not set: a real run stops before its first request; set llm.budget_usd=" in out
    assert not (tmp_path / "cache" / "llm").exists()


def test_a_run_killed_during_training_resumes_at_its_last_epoch_and_reuses_finished_stages(repo_root, tmp_path,
                                                                                           ml100k):
    """kill -9 in the middle of a training stage (the control); the same command then resumes it (not from
    epoch 0)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    sets = [f"cache_dir={tmp_path / 'cache'}", f"data.path={ml100k}", "gcl.epochs=6", "gcl.patience=50",
            "rank.enabled=false", *[f"pipeline.stages.{s}=false" for s in ("profiles", "augment", "groups",
                                                                            "rerank", "evaluate")]]
    args = [sys.executable, "-m", "flows.pipeline", "--model", "lightgcn"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    gcl_dir = tmp_path / "cache" / "ml-100k" / "control"
    deadline = time.time() + 400
    while time.time() < deadline and not list(gcl_dir.glob("*/checkpoints/*/last.pt")):
        assert proc.poll() is None, "the run ended before its first training checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(gcl_dir.glob("*/manifest.json")), "killed before finishing, so no manifest"

    second = subprocess.run(args, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "Task run 'prepare' - Finished in state Cached" in log
    manifest = json.loads(next(gcl_dir.glob("*/manifest.json")).read_text())
    assert manifest["meta"]["resumed_from_epoch"] >= 1
    assert manifest["meta"]["epochs_run"] == 6


def test_ctrl_c_or_sigterm_during_training_ends_at_once_in_one_line_and_the_next_run_resumes_at_its_epoch(
        repo_root, tmp_path, ml100k):
    """A real SIGINT to the run's process group (what Ctrl-C in a terminal sends, the temporary Prefect server
    included), then a real SIGTERM to the process alone: each ends within seconds with exit 128 + signal, one
    line naming the stage and no traceback, no child process left; the third run resumes and finishes."""
    import psutil

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    sets = [f"cache_dir={tmp_path / 'cache'}", f"data.path={ml100k}", "gcl.epochs=150", "gcl.patience=200",
            "rank.enabled=false", *[f"pipeline.stages.{s}=false" for s in ("profiles", "augment", "groups",
                                                                            "rerank", "evaluate")]]
    args = [sys.executable, "-m", "flows.pipeline", "--model", "lightgcn"]
    for s in sets:
        args += ["--set", s]
    ckpt = tmp_path / "cache" / "ml-100k" / "control"

    def interrupt(sig: int, group: bool, wait_for: str | None) -> tuple[int, str, float]:
        out = tmp_path / f"run-{sig}.log"
        with open(out, "w") as fh:
            proc = subprocess.Popen(args, cwd=repo_root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.time() + 400
        while time.time() < deadline and not (wait_for in out.read_text() if wait_for else
                                              list(ckpt.glob("*/checkpoints/*/last.pt"))):
            assert proc.poll() is None, out.read_text()[-3000:]
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the temporary Prefect server runs as a child"
        t0 = time.time()
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        took = time.time() - t0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        return rc, out.read_text(), took

    rc, log, took = interrupt(signal.SIGINT, True, None)  # at the first training checkpoint
    assert rc == 130 and took < 15, (rc, took, log[-3000:])
    assert ("interrupted (SIGINT) during stage 'control': finished stages, training checkpoints and answered LLM "
            "requests are kept; run the same command again to resume") in log
    assert "Traceback" not in log
    rc, log, took = interrupt(signal.SIGTERM, False, "resumed at epoch")
    assert rc == 143 and took < 15, (rc, took, log[-3000:])
    assert "interrupted (SIGTERM) during stage 'control'" in log and "Traceback" not in log

    third = subprocess.run(args, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "gcl LightGCN: resumed at epoch" in third.stdout + third.stderr
    manifest = json.loads(next(ckpt.glob("*/manifest.json")).read_text())
    assert manifest["meta"]["resumed_from_epoch"] >= 1 and manifest["meta"]["epochs_run"] == 150


def test_a_corrupted_table_in_the_cache_is_detected_and_its_stage_recomputed(repo_root, tmp_path, ml100k):
    assert run_pipeline(repo_root, tmp_path).returncode == 0
    table = next((tmp_path / "cache" / "ml-100k" / "prepare").glob("*/interactions.parquet"))
    good = table.read_bytes()
    table.write_bytes(good[: len(good) // 2])  # a truncated file, as after a disk fault

    again = run_pipeline(repo_root, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cached output is missing or corrupt; recomputing it" in again.stdout + again.stderr
    assert is_complete(table.parent)
    assert read_table(table.parent, "interactions").filter(pl.col("sign") > 0).height == 54413


def test_a_stage_switched_on_without_the_stage_it_needs_is_a_config_error_before_any_work(repo_root, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--set", "pipeline.stages.gcl=false",
                           "--set", f"cache_dir={tmp_path / 'cache'}"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "stage 'rerank' needs stage(s) ['gcl']" in proc.stderr
    assert not (tmp_path / "cache").exists()
