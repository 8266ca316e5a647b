"""One error path: a fault the user can fix (bad data, a locked stage, a FROM= that is not a stage) gives the same
one-line `error: ...` message under the real Prefect flow as under `--dry-run`, exit status 2, no traceback, and the
failed Prefect task (or flow) run carries that line as its state message."""

import os
import subprocess
import sys
from pathlib import Path

from lagcl.config import load_config
from tasks.base import make_plan

OFF = [f"pipeline.stages.{s}=false" for s in ("profiles", "augment", "groups", "control", "gcl", "rerank", "evaluate")]


def csv_dataset(root: Path, lines: list[str]) -> list[str]:
    """A `my-csv` (format: table) dataset in `root`; returns the --set overrides that point the run at it."""
    (root / "ratings.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(f"{x}\n" for x in lines))
    return [f"data.path={root}", "data.files={interactions: ratings.csv}", f"cache_dir={root / 'cache'}", *OFF]


def run(repo: Path, tmp: Path, sets: list[str], *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    args = [sys.executable, "-m", "flows.pipeline", "--data", "my-csv", *extra]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_a_data_fault_under_the_prefect_flow_prints_the_dry_run_message_once_without_a_traceback(repo_root, tmp_path):
    sets = csv_dataset(tmp_path, ["u1,i1,5,1", "u1,i2,five,2"])
    dry = run(repo_root, tmp_path, sets, "--dry-run")
    flow = run(repo_root, tmp_path, sets)
    msg = f"{tmp_path / 'ratings.csv'}:3: rating 'five' is not a number"
    assert dry.returncode == 2 and flow.returncode == 2
    assert len(error_lines(dry)) == 1 and error_lines(dry)[0].startswith(f"error: {msg}")
    assert error_lines(flow) == error_lines(dry)
    out = flow.stdout + flow.stderr
    assert "Traceback" not in out and "NoneType: None" not in out
    assert f"Task run 'prepare' - Finished in state Failed(\"{error_lines(dry)[0][len('error: '):]}\")" in out


def test_a_locked_stage_under_the_prefect_flow_is_one_message_naming_the_holder_without_a_traceback(
        repo_root, tmp_path):
    sets = csv_dataset(tmp_path, [f"u{u},i{(u + i) % 9},5,{i}" for u in range(9) for i in range(6)])
    plan = make_plan(load_config(data="my-csv", engine="embedding", model="lightgcn", overrides=sets))
    with plan.stage_dir("prepare"):  # another run writing the stage: this process holds its lock
        proc = run(repo_root, tmp_path, sets)
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "stage 'prepare'" in error_lines(proc)[0]
    assert f"is being written by another run (process {os.getpid()}" in error_lines(proc)[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_from_stage_that_is_not_in_the_run_fails_the_flow_run_with_the_message_and_no_traceback(
        repo_root, tmp_path):
    sets = csv_dataset(tmp_path, [f"u{u},i{(u + i) % 9},5,{i}" for u in range(9) for i in range(6)])
    proc = run(repo_root, tmp_path, sets, "--from-stage", "gcl")
    assert proc.returncode == 2
    assert error_lines(proc) == ["error: FROM=gcl is not a stage of this run; stages: prepare"]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "Finished in state Failed('FROM=gcl is not a stage of this run" in out
