"""`lagcl` command line: run the pipeline, show each stage's state.

    lagcl run --data ml-100k [--model xsimgcl --rank off --set gcl.lr=0.002]
    lagcl status --data ml-100k [same options as run]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lagcl.artifacts import read_manifest
from lagcl.errors import LagclError


def add_run_options(p: argparse.ArgumentParser) -> None:
    from tasks.base import STAGES

    p.add_argument("--data", default="ml-100k")
    p.add_argument("--engine", default="embedding")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--rank", choices=["on", "off"], default=None)
    p.add_argument("--ablation", choices=["no-data", "no-rank", "no-rerank"], default=None)
    p.add_argument("--from-stage", choices=list(STAGES), default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def stage_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    from flows.pipeline import build_config
    from tasks.base import make_plan

    cfg = build_config(args.data, args.engine, args.model, args.rank, args.ablation, args.overrides)
    plan = make_plan(cfg)
    rows = []
    for stage, fp in plan.fingerprints.items():
        path = Path(plan.ref(stage).path)
        manifest = read_manifest(path)
        if manifest is not None:
            state = "complete"
        elif path.is_dir() and any(p.is_file() for p in path.rglob("*.parquet")):
            state = "partial (resumes)"
        else:
            state = "not run"
        meta = (manifest or {}).get("meta", {})
        usage = meta.get("usage") or {}
        rows.append({
            "stage": stage, "state": state, "fingerprint": fp,
            "rows": sum((manifest or {}).get("rows", {}).values()),
            "seconds": (manifest or {}).get("seconds"),
            "spend_usd": usage.get("cost_usd", 0.0),
            "path": str(path),
        })
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    rows = stage_rows(args)
    print(f"{'stage':<9} {'state':<18} {'fingerprint':<17} {'rows':>10} {'seconds':>8} {'spend $':>8}")
    for r in rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{r['stage']:<9} {r['state']:<18} {r['fingerprint']:<17} {r['rows']:>10,} {secs:>8} "
              f"{r['spend_usd']:>8.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lagcl")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_run_options(sub.add_parser("run", help="run the pipeline (same as make pipeline)"))
    add_run_options(sub.add_parser("status", help="each stage's state, fingerprint, rows and spend"))
    args = p.parse_args(argv)
    try:
        if args.cmd == "status":
            return cmd_status(args)
        from flows.pipeline import run_from_args

        return run_from_args(args)
    except LagclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
