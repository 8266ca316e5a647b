"""Stage 0: raw files -> interactions (signed, split), users, items."""

from __future__ import annotations

from lagcl.data.formats import read_raw
from lagcl.data.prepare import prepare
from tasks.base import REPO_ROOT, Plan, StageRef, log

STAGE = "prepare"


def run(plan: Plan) -> StageRef:
    cfg = plan.cfg
    ref = plan.ref(STAGE)
    with plan.stage_dir(STAGE) as sd:
        if sd.complete:
            return ref
        raw = read_raw(cfg.data, REPO_ROOT)
        out = prepare(raw, cfg.data, cfg.seed)
        sd.write_table("interactions", out.interactions)
        sd.write_table("users", out.users)
        sd.write_table("items", out.items)
        sd.finish({"stats": out.stats, "dataset": cfg.data.name})
    s = out.stats
    log.info(
        "prepare %s: %d users, %d items, %d interactions (%d positive: %d/%d/%d train/valid/test; %d negative), "
        "density %.4f", cfg.data.name, s["users"], s["items"], s["interactions"], s["positives"],
        s["positives_train"], s["positives_valid"], s["positives_test"], s["negatives"], s["density"])
    return ref
