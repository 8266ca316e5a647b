"""Stage 4: the levels, chosen on validation against the control (DESIGN.md 13) -> the chosen model's
checkpoint and cf_topk, `levels` (the chain control -> + data -> + rank, each step kept or turned down with
its reason), `metrics` of every trained variant (valid/test, both protocols, all/cold/warm users), `epochs`
(eq. 7-12). The data level is tried at each `data_level.weights` strength with the rank level off, the rank
level on top of what was kept (lagcl/gate.py).

With `graph.backend: dgl` and no DGL in this Python (the main environment: PyPI's DGL 2.1.0 needs torch
<= 2.2.1), `run` runs this same stage code in the DGL environment, `python -m tasks.gcl` under
$LAGCL_DGL_PYTHON (default `.venv-dgl/bin/python`, built by `make setup-dgl`): the configuration and the
fingerprints go in on stdin, the child writes the stage folder (lock, checkpoints, manifest) exactly as an
in-process run would, and its log lines are re-emitted through this process's "lagcl" logger (so they
reach Prefect). The parent never opens the stage folder, so it holds no lock the child would wait on.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import polars as pl
import torch

from lagcl.artifacts import is_complete, read_table
from lagcl.config import Config
from lagcl.errors import ConfigError, LagclError
from lagcl.augment import cold_warm
from lagcl.gate import FitContext, Fitted, Variant, choose_levels, data_level_plan, fit_variant, topk_table
from lagcl.train import category_groups
from tasks.base import REPO_ROOT, Plan, StageRef, log, rank_enabled

STAGE = "gcl"
DGL_PYTHON_ENV = "LAGCL_DGL_PYTHON"
_LOG_PREFIX = "@lagcl-log:"  # marks the child's log records in its output, level name follows


def _upstream_table(plan: Plan, stage: str, name: str) -> pl.DataFrame | None:
    """A table of an optional upstream stage, or None while that stage is off or not built yet."""
    ref = plan.upstream(STAGE).get(stage)
    if ref is None or not is_complete(Path(ref.path), verify=False):
        return None
    return read_table(Path(ref.path), name)


def _groups(plan: Plan, interactions: pl.DataFrame, items: pl.DataFrame, n_users: int, n_items: int
            ) -> tuple[torch.Tensor, torch.Tensor, str]:
    if plan.cfg.rank.groups_from == "groups":
        ug, ig = _upstream_table(plan, "groups", "user_groups"), _upstream_table(plan, "groups", "item_groups")
        if ug is not None and ig is not None:
            user_group = torch.full((n_users,), -1, dtype=torch.long)
            item_group = torch.full((n_items,), -1, dtype=torch.long)
            user_group[torch.from_numpy(ug["user"].to_numpy().astype("int64"))] = \
                torch.from_numpy(ug["group"].to_numpy().astype("int64"))
            item_group[torch.from_numpy(ig["item"].to_numpy().astype("int64"))] = \
                torch.from_numpy(ig["group"].to_numpy().astype("int64"))
            # an ungrouped node must not be "hard" for every other ungrouped node: give each its own group
            for g in (user_group, item_group):
                missing = g < 0
                g[missing] = int(g.max()) + 1 + torch.arange(int(missing.sum()))
            return user_group, item_group, "groups"
        log.warning("gcl: the groups stage has no output in this run; using the stand-in genre groups")
    user_group, item_group = category_groups(interactions, items, n_users, n_items)
    return user_group, item_group, "categories (stand-in: first genre)"


def dgl_python() -> Path:
    """The interpreter of the DGL environment: $LAGCL_DGL_PYTHON, else the repository's .venv-dgl."""
    return Path(os.environ.get(DGL_PYTHON_ENV) or REPO_ROOT / ".venv-dgl" / "bin" / "python")


def runs_in_dgl_env(plan: Plan) -> bool:
    """True when this stage must run in the DGL environment: DGL asked for and not importable here."""
    return plan.cfg.graph.backend == "dgl" and importlib.util.find_spec("dgl") is None


def run(plan: Plan) -> StageRef:
    if runs_in_dgl_env(plan):
        return run_in_dgl_env(plan, STAGE)
    return _run(plan)


def run_in_dgl_env(plan: Plan, stage: str) -> StageRef:
    """Run the training stage `stage` (control or gcl) under the DGL environment's Python and wait for it,
    streaming its output."""
    ref = plan.ref(stage)
    if is_complete(Path(ref.path)):
        return ref
    python = dgl_python()
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise ConfigError(f"graph.backend=dgl runs the {stage} stage with {python} (${DGL_PYTHON_ENV}), which does not "
                          "exist: run `make setup-dgl` first (it builds .venv-dgl), or set "
                          f"{DGL_PYTHON_ENV} to a Python with dgl==2.1.0 and this project installed")
    payload = json.dumps({"config": plan.cfg.model_dump(mode="json"), "fingerprints": plan.fingerprints,
                          "path": ref.path})
    log.info("%s: graph.backend=dgl, running the stage in the DGL environment (%s)", stage, python)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=30)
    bar_open = False  # a progress bar is drawn on stderr's last line: end it before the next log line
    # newline="": keep each piece's own terminator, so tqdm's "\r" redraws can be told from whole lines
    proc = subprocess.Popen([str(python), "-m", "tasks.gcl", "--plan-from-stdin", "--stage", stage], cwd=REPO_ROOT,
                            env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.stdin.write(payload.encode())
        proc.stdin.close()
        for piece in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline=""):
            line = piece.rstrip("\r\n")
            if bar_open and not piece.endswith("\r"):
                sys.stderr.write("\n")
                bar_open = False
            if line.startswith(_LOG_PREFIX):
                level, _, msg = line[len(_LOG_PREFIX):].partition(":")
                log.log(logging.getLevelName(level) if level.isupper() else logging.INFO, "%s", msg)
                tail.append(msg)
            elif piece.endswith("\r"):  # a progress-bar redraw: show it live, keep it out of the log
                sys.stderr.write("\r" + line)
                sys.stderr.flush()
                bar_open = bool(line)
            elif line.strip():
                log.info("%s (DGL env): %s", stage, line)
                tail.append(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the child; its checkpoint lets the next run resume
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc != 0:
        raise LagclError(f"the {stage} stage in the DGL environment ({python}) failed with exit status {rc}; its last "
                         "output:\n  " + "\n  ".join(tail))
    if not is_complete(Path(ref.path)):
        raise LagclError(f"the {stage} stage in the DGL environment ({python}) exited cleanly but {ref.path} is not a "
                         "complete stage folder; rerun to resume it")
    return ref


def cold_warm_segments(interactions: pl.DataFrame, n_users: int, threshold: int) -> dict[str, torch.Tensor | None]:
    """Evaluation segments: all users, cold-start users (< `threshold` training positives, DESIGN.md 4), warm."""
    parts = cold_warm(interactions, range(n_users), threshold)
    return {"all": None, **{name: torch.tensor(us, dtype=torch.long) for name, us in parts.items()}}


def fit_context(plan: Plan, interactions: pl.DataFrame, items: pl.DataFrame, n_users: int, n_items: int,
                ckpt_root: Path, with_groups: bool) -> tuple[FitContext, str]:
    cfg = plan.cfg
    user_group = item_group = None
    groups_source = "none (rank level off)"
    if with_groups:
        user_group, item_group, groups_source = _groups(plan, interactions, items, n_users, n_items)
    ctx = FitContext(interactions, n_users, n_items, cfg.gcl, cfg.rank, cfg.data_level, cfg.graph.backend,
                     cfg.training_seed, cold_warm_segments(interactions, n_users, cfg.augment.cold_threshold),
                     sorted(set(cfg.evaluate.topk) | {20}), user_group, item_group, ckpt_root)
    return ctx, groups_source


METRICS_SCHEMA = {"variant": pl.String, "split": pl.String, "protocol": pl.String, "segment": pl.String,
                  "metric": pl.String, "k": pl.Int32, "value": pl.Float64}


def metrics_table(fitted: list[Fitted]) -> pl.DataFrame:
    return pl.DataFrame([{"variant": f.variant.name, **r} for f in fitted for r in f.rows], schema=METRICS_SCHEMA)


def write_model(sd, plan: Plan, f: Fitted) -> None:
    """model.pt and cf_topk (top `gcl.topk_out` per user, training positives masked) of a trained variant."""
    cfg, data = plan.cfg, f.data
    torch.save({"backbone": cfg.gcl.backbone, "state_dict": f.result.best_state, "n_users": data.n_users,
                "n_items": data.n_items, "best_epoch": f.result.best_epoch, "gcl": cfg.gcl.model_dump(),
                "variant": f.variant.name, "rank": cfg.rank.model_dump() if f.variant.rank else None},
               sd.file_path("model.pt"))
    sd.write_table("cf_topk", topk_table(f, cfg.gcl.topk_out, cfg.gcl.eval_batch_users))


def epochs_table(fitted: list[Fitted]) -> pl.DataFrame:
    frames = [f.result.epochs.with_columns(pl.lit(f.variant.name).alias("variant"))
              for f in fitted if f.result is not None and f.result.epochs.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def fitted_from_stage(folder: Path, name: str = "control") -> Fitted:
    """A variant trained by an earlier stage (the control), from its metrics and per-user tables."""
    m = read_table(folder, "metrics").filter(pl.col("variant") == name)
    per_user = read_table(folder, "per_user").filter(pl.col("variant") == name).drop("variant")
    return Fitted(Variant(name), m.drop("variant").to_dicts(), per_user=per_user)


def per_user_table(fitted: list[Fitted]) -> pl.DataFrame:
    """Every variant's per-user Recall/NDCG@20 on both splits: what `make table2/table3` and the gate test."""
    return pl.concat([f.per_user.with_columns(pl.lit(f.variant.name).alias("variant"))
                      for f in fitted if f.per_user is not None])


def _run(plan: Plan) -> StageRef:
    cfg = plan.cfg
    ref = plan.ref(STAGE)
    ups = plan.upstream(STAGE)
    if "control" not in ups:
        raise ConfigError("the gcl stage measures every level against the control stage: enable "
                          "pipeline.stages.control")
    with plan.stage_dir(STAGE) as sd:
        if sd.complete:
            return ref
        t_start = time.perf_counter()
        prep, ctrl = Path(ups["prepare"].path), Path(ups["control"].path)
        interactions = read_table(prep, "interactions")
        items = read_table(prep, "items")
        n_users, n_items = read_table(prep, "users").height, items.height
        rank_on = rank_enabled(cfg)
        ctx, groups_source = fit_context(plan, interactions, items, n_users, n_items, sd.file_path("checkpoints"),
                                         with_groups=rank_on)
        control = fitted_from_stage(ctrl)
        control_topk = read_table(ctrl, "cf_topk")
        variants, blocked, check = data_level_plan(cfg.data_level, cfg.gate, _upstream_table(plan, "augment", "scores"),
                                                   _upstream_table(plan, "augment", "augmented"), interactions,
                                                   control_topk)
        if check:
            log.info("gcl data level: engine precision %.4f vs control %.4f on validation positives of %d cold "
                     "users (%d augmented positives, %s reading)", check["engine_precision"],
                     check["control_precision"], check["users"], check["positives"], cfg.data_level.reading)
        log.info("gcl: %s, %d users, %d items; levels to try: data %s, rank %s (groups: %s)", cfg.gcl.backbone,
                 n_users, n_items, blocked or ", ".join(v.name for v in variants) or "none",
                 "on" if rank_on else "off", groups_source)
        chosen, steps, trained = choose_levels(control, lambda v: fit_variant(ctx, v), variants, blocked, rank_on,
                                               cfg.gate)
        for st in steps:
            log.info("gcl gate: %-6s %-28s %s: %s", st.level, st.variant, "KEPT" if st.kept else "off", st.reason)
        if chosen is control:  # no level kept: this stage's model is the control's
            shutil.copyfile(ctrl / "model.pt", sd.file_path("model.pt"))
            sd.write_table("cf_topk", control_topk)
        else:
            write_model(sd, plan, chosen)
        sd.write_table("levels", pl.DataFrame([st.as_row() for st in steps]))
        sd.write_table("metrics", metrics_table([control, *trained]))
        sd.write_table("per_user", per_user_table([control, *trained]))
        sd.write_table("epochs", epochs_table(trained))
        kept = {st.level for st in steps if st.kept}
        ranked = next((f for f in trained if f.variant.rank), None)
        chosen_data = chosen.data.info if chosen.data is not None else {}
        meta = {
            "backbone": cfg.gcl.backbone, "variant": chosen.variant.name, "groups": groups_source,
            "rank_level": "rank" in kept, "data_level": "data" in kept, "rank_tried": rank_on,
            "data_tried": blocked is None and bool(variants), "data_check": check, "data": chosen_data,
            "levels": [st.as_row() for st in steps], "gate": cfg.gate.model_dump(),
            "best_epoch": chosen.result.best_epoch if chosen.result else None,
            "test_recall@20": chosen.value("test"), "test_ndcg@20": chosen.value("test", "ndcg"),
            "valid_recall@20": chosen.valid, "valid_ndcg@20": chosen.value("valid", "ndcg"),
            "control_test_recall@20": control.value("test"), "control_test_ndcg@20": control.value("test", "ndcg"),
            "control_valid_recall@20": control.valid,
            "train_seconds": round(sum(f.result.train_seconds for f in trained if f.result), 3),
            # of the rank-level variant, kept or not: how many LABPR negatives were hard and what w_h did
            "hard_negative_share": _mean_epoch(ranked, "hard") if ranked else None,
            "hard_loss_share": _mean_epoch(ranked, "hard_loss") if ranked else None,
            "stage_seconds": round(time.perf_counter() - t_start, 3),
        }
        sd.finish(meta)
    log.info("gcl %s: chosen '%s', test Recall@20 %.4f NDCG@20 %.4f (control %.4f / %.4f), valid Recall@20 %.4f",
             cfg.gcl.backbone, meta["variant"], meta["test_recall@20"], meta["test_ndcg@20"],
             meta["control_test_recall@20"], meta["control_test_ndcg@20"], meta["valid_recall@20"])
    return ref


def _mean_epoch(f: Fitted, col: str) -> float | None:
    if f.result is None or not f.result.epochs.height or col not in f.result.epochs.columns:
        return None
    return round(float(f.result.epochs[col].mean()), 4)


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.gcl --plan-from-stdin`: the DGL environment's side of `_run_in_dgl_env`."""
    p = argparse.ArgumentParser(prog="python -m tasks.gcl", description=main.__doc__)
    p.add_argument("--plan-from-stdin", action="store_true", required=True,
                   help='read {"config", "fingerprints", "path"} as JSON from stdin and run the stage here')
    p.add_argument("--stage", choices=["control", "gcl"], default=STAGE)
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_PREFIX + "%(levelname)s:%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        payload = json.load(sys.stdin)
        plan = Plan(Config.model_validate(payload["config"]), dict(payload["fingerprints"]))
        if plan.ref(args.stage).path != payload["path"]:
            raise LagclError(f"the DGL environment resolves the {args.stage} stage folder to {plan.ref(args.stage).path}, not "
                             f"{payload['path']}: run both environments from the same checkout")
        if args.stage == "control":
            from tasks import control

            control._run(plan)
        else:
            _run(plan)
    except LagclError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
