"""A scheduled rerun end to end (issue 14): a real Prefect server, a served deployment run from the API, new
ratings appended to the raw file, a second run that recomputes prepare and whose recommendations hold the new
user, and a third run with nothing new that is all Cached."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import yaml

from lagcl.artifacts import read_table
from lagcl.data.fetch import ensure_ml100k

from test_prefect_server import prefect_server, settled_task_runs, wait_for  # noqa: F401  (the fixture)

OFF = ("profiles", "augment", "groups", "rerank")
NEW_USER = "9999"


def test_a_rerun_after_new_ratings_recomputes_and_recommends_to_the_new_user_then_a_third_is_cached(
        prefect_server, tmp_path, repo_root):  # noqa: F811
    api, env = prefect_server
    raw = tmp_path / "raw"
    shutil.copytree(ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k"), raw)
    overrides = [f"cache_dir={tmp_path / 'cache'}", f"data.path={raw}", "rank.enabled=false", "gcl.epochs=2",
                 "recommend.n=20", *[f"pipeline.stages.{s}=false" for s in OFF]]
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({"deployments": [
        {"name": "nightly-test", "cron": "0 3 * * *", "parameters": {"data": "ml-100k", "overrides": overrides}}]}))
    serve = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--schedules", str(schedules)],
                             cwd=repo_root, env={**env, "PREFECT_API_URL": api}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = httpx.Client(base_url=api, timeout=10)
        dep = wait_for(lambda: next((d for d in client.post("/deployments/filter", json={}).json()
                                     if d["name"] == "nightly-test"), None), 120, "the deployment to register")

        def run_once() -> dict[str, str]:
            for _ in range(3):
                resp = client.post(f"/deployments/{dep['id']}/create_flow_run", json={})
                if resp.status_code < 500:
                    break
                time.sleep(2)
            assert resp.status_code == 201, resp.text[:1000]
            run = resp.json()

            def finished():
                r = client.get(f"/flow_runs/{run['id']}")
                state = r.json()["state_type"] if r.status_code == 200 else None
                return state if state in ("COMPLETED", "FAILED", "CRASHED") else None

            assert wait_for(finished, 900, "the flow run") == "COMPLETED"
            tasks = settled_task_runs(client, run["id"], {"prepare", "control", "gcl", "evaluate"})
            return {t["name"]: t["state_name"] for t in tasks}

        first = run_once()
        assert set(first) == {"prepare", "control", "gcl", "evaluate"}
        assert set(first.values()) == {"Completed"}

        # the night's new data: a new user with ten liked films, appended to the raw file
        films = ["50", "100", "181", "258", "286", "288", "294", "300", "1", "7"]
        with open(raw / "ml-100k.inter", "a") as fh:
            fh.writelines(f"{NEW_USER}\t{f}\t5\t{893286638 + k}\n" for k, f in enumerate(films))
        second = run_once()
        assert set(second.values()) == {"Completed"}, second  # prepare recomputed, and everything after it

        runs = [json.loads(x) for x in (tmp_path / "cache" / "ml-100k" / "runs.jsonl").read_text().splitlines()]
        assert len(runs) == 2 and runs[1]["fingerprints"]["prepare"] != runs[0]["fingerprints"]["prepare"]
        rec = read_table(Path(runs[1]["folders"]["evaluate"]), "recommendations")
        mine = rec.filter(pl.col("user_raw") == NEW_USER)
        prep = Path(runs[1]["folders"]["prepare"])
        user = read_table(prep, "users").filter(pl.col("raw_id") == NEW_USER)["user"].item()
        known = read_table(prep, "interactions").filter((pl.col("user") == user) & (pl.col("sign") > 0) &
                                                        pl.col("split").is_in(["train", "valid"]))
        assert known.height == 8  # 7 training and 1 validation film of the ten (7:1:2)
        assert mine.height == 20 and not set(mine["item"].to_list()) & set(known["item"].to_list())
        assert NEW_USER not in read_table(Path(runs[0]["folders"]["evaluate"]), "recommendations")["user_raw"]

        third = run_once()
        assert set(third.values()) == {"Cached"}, third
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
