"""The UI way of use: a real Prefect server, deployments served by `flows.deploy`, runs triggered by API."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from lagcl.data.fetch import ensure_ml100k

OFF = ("profiles", "augment", "groups", "gcl", "rerank", "evaluate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 120, "the Prefect server")
        yield api, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_deployment_runs_from_the_api_and_a_second_run_shows_the_stage_cached(prefect_server, tmp_path, repo_root):
    api, env = prefect_server
    raw = ensure_ml100k(repo_root / "cache" / "raw" / "ml-100k")
    overrides = [f"cache_dir={tmp_path / 'cache'}", f"data.path={raw}", *[f"pipeline.stages.{s}=false" for s in OFF]]
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({"deployments": [
        {"name": "test-ml100k", "cron": "0 3 * * *", "parameters": {"data": "ml-100k", "overrides": overrides}}]}))
    serve = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--schedules", str(schedules)],
                             cwd=repo_root, env={**env, "PREFECT_API_URL": api}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = httpx.Client(base_url=api, timeout=10)

        def deployment():
            found = client.post("/deployments/filter", json={}).json()
            return next((d for d in found if d["name"] == "test-ml100k"), None)

        dep = wait_for(deployment, 120, "the deployment to register")
        assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"

        def run_once() -> list[str]:
            run = client.post(f"/deployments/{dep['id']}/create_flow_run", json={}).json()

            def finished():
                state = client.get(f"/flow_runs/{run['id']}").json()["state_type"]
                return state if state in ("COMPLETED", "FAILED", "CRASHED") else None

            assert wait_for(finished, 240, "the flow run") == "COMPLETED"
            tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
            return sorted(t["state_name"] for t in tasks)

        assert run_once() == ["Completed"]
        assert run_once() == ["Cached"]
        assert len(list((tmp_path / "cache" / "ml-100k" / "prepare").glob("*/manifest.json"))) == 1
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
