"""The DGL environment's side of tasks.dgl.run_in_dgl_env: `python -m tasks.dgl_child --plan-from-stdin --stage
gcl|control` reads the plan from stdin and runs the training stage here, its log records marked for the parent."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lagcl.config import Config
from lagcl.errors import LagclError
from tasks.base import Plan, log
from tasks.dgl import LOG_PREFIX
from tasks.stages import STAGES


def main(argv: list[str] | None = None) -> int:
    """Run the stage the parent planned, in this (the DGL environment's) Python."""
    p = argparse.ArgumentParser(prog="python -m tasks.dgl_child", description=main.__doc__)
    p.add_argument("--plan-from-stdin", action="store_true", required=True,
                   help='read {"config", "fingerprints", "path"} as JSON from stdin and run the stage here')
    p.add_argument("--stage", choices=["control", "gcl"], default="gcl")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(levelname)s:%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        payload = json.load(sys.stdin)
        plan = Plan(Config.model_validate(payload["config"]), dict(payload["fingerprints"]))
        if plan.ref(args.stage).path != payload["path"]:
            raise LagclError(f"the DGL environment resolves the {args.stage} stage folder to {plan.ref(args.stage).path}, not "
                             f"{payload['path']}: run both environments from the same checkout")
        STAGES[args.stage].runner(plan)
    except LagclError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
