"""Stage 0: raw files -> interactions (signed, split), users, items."""

from __future__ import annotations

from lagcl.data.digest import inputs_digest, raw_inputs
from lagcl.data.readers import raw_root, read_raw
from lagcl.data.prepare import prepare
from lagcl.errors import DataError
from tasks.base import REPO_ROOT, Plan, StageRef, log, run_stage

STAGE = "prepare"


def run(plan: Plan) -> StageRef:
    return run_stage(plan, STAGE, _build, _summary)


def _build(plan: Plan, sd) -> dict:
    cfg = plan.cfg
    raw = read_raw(cfg.data, REPO_ROOT)
    # the folder is named after the files' digest taken when the run was planned: a file replaced since
    # (or while it was read) would put other data under that name
    now = raw_inputs(cfg.data, raw_root(cfg.data, REPO_ROOT), plan.store.root)
    if plan.inputs and inputs_digest(now) != inputs_digest(plan.inputs):
        changed = sorted(r for r in {*now, *plan.inputs}
                         if (now[r].sha256 if r in now else None) != (plan.inputs[r].sha256 if r in plan.inputs
                                                                      else None))
        raise DataError(f"raw file(s) of '{cfg.data.name}' changed after this run was planned ({changed}); "
                        "run the same command again once the files are written")
    out = prepare(raw, cfg.data, cfg.seed)
    sd.write_table("interactions", out.interactions)
    sd.write_table("users", out.users)
    sd.write_table("items", out.items)
    return {"stats": out.stats, "dataset": cfg.data.name, "inputs": {role: f.as_json() for role, f in now.items()}}


def _summary(meta: dict) -> None:
    s = meta["stats"]
    log.info(
        "prepare %s: %d users, %d items, %d interactions (%d positive: %d/%d/%d train/valid/test; %d negative), "
        "density %.4f", meta["dataset"], s["users"], s["items"], s["interactions"], s["positives"],
        s["positives_train"], s["positives_valid"], s["positives_test"], s["negatives"], s["density"])
