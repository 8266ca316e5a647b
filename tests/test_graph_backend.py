"""graph.backend=dgl seen from the main environment, which has no DGL (PyPI's DGL 2.1.0 needs torch <= 2.2.1):
the backend is part of the gcl fingerprint, and every way of reaching DGL without it says to run
`make setup-dgl`. The DGL backend itself is checked in tests/test_graph_dgl.py (`make test-dgl`)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from test_train import tiny_tables

from lagcl.config import load_config
from lagcl.errors import ConfigError, LagclError
from lagcl.models import Graph
from tasks import control as control_stage
from tasks import dgl
from tasks import gcl as gcl_stage
from tasks.base import make_plan

USERS, ITEMS = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])


@pytest.fixture(autouse=True)
def main_environment():
    if importlib.util.find_spec("dgl") is not None:
        pytest.fail(f"these tests describe the main environment, without DGL; {sys.executable} has it")


def tiny_plan(tmp_path, backend="dgl"):
    """A gcl-ready plan: a tiny prepare stage written under tmp_path."""
    cfg = load_config(overrides=[f"cache_dir={tmp_path}", "gcl.epochs=1", "gcl.emb_dim=4", "gcl.topk_out=5",
                                 "rank.groups_from=categories", f"graph.backend={backend}"])
    plan = make_plan(cfg)
    inter, users, items = tiny_tables()
    with plan.store.stage("prepare", plan.fingerprints["prepare"]) as sd:
        for name, df in (("interactions", inter), ("users", users), ("items", items)):
            sd.write_table(name, df)
        sd.finish({})
    return plan


def test_graph_backend_changes_the_training_stages_fingerprints_and_those_after_them_only():
    torch_fp = make_plan(load_config()).fingerprints
    dgl_fp = make_plan(load_config(overrides=["graph.backend=dgl"])).fingerprints
    assert [s for s in torch_fp if torch_fp[s] != dgl_fp[s]] == ["control", "gcl", "rerank", "evaluate"]


def test_a_dgl_graph_without_dgl_installed_says_to_run_make_setup_dgl():
    with pytest.raises(ConfigError, match=r"graph.backend=dgl needs DGL 2.1.0.*make setup-dgl"):
        Graph(USERS, ITEMS, 3, 3, backend="dgl")


def test_gcl_stage_with_a_missing_dgl_interpreter_says_to_run_make_setup_dgl_and_writes_nothing(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path)
    missing = tmp_path / "no-venv" / "bin" / "python"
    monkeypatch.setenv("LAGCL_DGL_PYTHON", str(missing))
    assert dgl.runs_in_dgl_env(plan) and dgl.dgl_python() == missing
    with pytest.raises(ConfigError, match=rf"{missing}.*does not exist: run `make setup-dgl` first"):
        gcl_stage.run(plan)
    assert not Path(plan.ref("gcl").path).exists()


def test_a_training_stage_reports_the_dgl_environments_own_error_when_that_python_has_no_dgl(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path)
    monkeypatch.setenv("LAGCL_DGL_PYTHON", sys.executable)  # a real interpreter, but without DGL
    with pytest.raises(LagclError, match=r"(?s)control stage in the DGL environment.*failed with exit status 2"
                                         r".*needs DGL 2.1.0.*make setup-dgl"):
        control_stage.run(plan)
    assert not (Path(plan.ref("control").path) / "manifest.json").exists()


def test_the_default_dgl_interpreter_is_the_repositorys_venv_dgl(monkeypatch):
    monkeypatch.delenv("LAGCL_DGL_PYTHON", raising=False)
    assert dgl.dgl_python() == Path(dgl.REPO_ROOT) / ".venv-dgl" / "bin" / "python"
