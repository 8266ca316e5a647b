"""The UI way of use: a real Prefect server, deployments served by `flows.deploy`, runs triggered by API."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from lagcl.data.fetch import ensure_ml100k

CHROMIUM = shutil.which("chromium") or "chromium (not installed: run `make ui-deps`)"
OFF = ("profiles", "augment", "groups", "control", "gcl", "rerank", "evaluate")


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


def settled_task_runs(client: httpx.Client, flow_run_id: str, names: set[str], timeout: float = 60) -> list[dict]:
    """The flow run's task runs once the server holds the final state of each of `names`. Task run states reach
    the server as events, after the flow run's own state: read right after COMPLETED, a CI run once saw a task
    still under its provisional name ("stage-345") and Pending."""
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    def settled():
        tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
        done = {t["name"] for t in tasks if t["state_type"] in final}
        return tasks if done >= names and len(tasks) == len(names) else None

    return wait_for(settled, timeout, f"the final states of the task runs {sorted(names)}")


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           # the UI's browser code must call this server, not the default port
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_API_PORT": str(port)}
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

        def run_once() -> tuple[str, list[str]]:
            for _ in range(3):
                # the served deployment's scheduler writes to the same SQLite file: once in a CI run a write
                # that met its lock answered a 5xx; ask again as a user clicking Run again would
                resp = client.post(f"/deployments/{dep['id']}/create_flow_run", json={})
                if resp.status_code < 500:
                    break
                time.sleep(2)
            assert resp.status_code == 201, f"create_flow_run answered {resp.status_code}: {resp.text[:1000]}"
            run = resp.json()

            def finished():
                resp = client.get(f"/flow_runs/{run['id']}")
                state = resp.json()["state_type"] if resp.status_code == 200 else None
                return state if state in ("COMPLETED", "FAILED", "CRASHED") else None

            assert wait_for(finished, 240, "the flow run") == "COMPLETED"
            tasks = settled_task_runs(client, run["id"], {"prepare"})
            return run["name"], sorted(t["state_name"] for t in tasks)

        _, first_states = run_once()
        assert first_states == ["Completed"]
        _, second_states = run_once()
        assert second_states == ["Cached"]
        assert len(list((tmp_path / "cache" / "ml-100k" / "prepare").glob("*/manifest.json"))) == 1

        # a person opening the deployment's page in the UI sees the runs listed
        ui = api.removesuffix("/api") + f"/deployments/deployment/{dep['id']}?tab=Runs"
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=30000", "--dump-dom", ui],
            capture_output=True, text=True, timeout=120).stdout
        text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
        assert "Deployment: test-ml100k" in text
        assert "2 Flow runs" in text
        assert "At 03:00 AM every day" in text
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
