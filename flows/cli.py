"""`lagcl` command line: run the pipeline, show each stage's state.

    lagcl run --data ml-100k [--model xsimgcl --rank off --set gcl.lr=0.002]
    lagcl status --data ml-100k [same options as run]
    lagcl compare --data ml-100k      (every finished run side by side: backbone, levels on, metrics, p)
    python -m flows.tables 3 --seeds 5 (the paper's Table 3 over seeds, intervals, paired tests: make table3)
    lagcl recommend --user 196 [--n 20] [same options as run]   (one user's recommendations, and why)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.options import add_run_options, build_config
from flows.summary import comparison_rows, format_comparison
from lagcl.artifacts import read_manifest
from lagcl.errors import LagclError
from tasks.base import make_plan
from tasks.meta import meta_of


def stage_rows(args: argparse.Namespace) -> list[dict[str, object]]:
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


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = build_config(args.data, args.engine, args.model, args.rank, args.ablation, args.overrides)
    print(format_comparison(comparison_rows(make_plan(cfg).store), cfg.data.name))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = stage_rows(args)
    print(f"{'stage':<9} {'state':<18} {'fingerprint':<17} {'rows':>10} {'seconds':>8} {'spend $':>8}")
    for r in rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{r['stage']:<9} {r['state']:<18} {r['fingerprint']:<17} {r['rows']:>10,} {secs:>8} "
              f"{r['spend_usd']:>8.2f}")
    return 0


def run_folders(args: argparse.Namespace) -> tuple[dict[str, Path], str | None]:
    """stage -> finished folder of the run these options describe; when that run has not finished (e.g. the raw
    data changed since), the newest finished run of the dataset, with a note saying so."""
    cfg = build_config(args.data, args.engine, args.model, args.rank, args.ablation, args.overrides)
    plan = make_plan(cfg)
    note = None
    ev = Path(plan.ref("evaluate").path) if "evaluate" in plan.fingerprints else None
    if ev is None or read_manifest(ev) is None:
        done = [(m.get("finished_at", ""), p) for p in plan.store.iter_stage_dirs("evaluate")
                if (m := read_manifest(p)) is not None and "recommendations.parquet" in m.get("files", {})]
        if not done:
            raise LagclError(f"no finished run of {cfg.data.name} with recommendations in {plan.store.root}: run "
                             "`make pipeline` (or `lagcl run`) with these options first")
        finished_at, ev = max(done)
        note = (f"note: the run of these options has not finished; showing the newest finished run of "
                f"{cfg.data.name} ({finished_at}, {ev})")
    fps = meta_of(ev).get("fingerprints") or {}
    folders = {s: plan.store.stage_path(s, fp) for s, fp in fps.items()}
    folders["evaluate"] = ev
    return folders, note


def cmd_recommend(args: argparse.Namespace) -> int:
    from lagcl.recommend import explain_user

    folders, note = run_folders(args)
    if note:
        print(note)
    print("\n".join(explain_user(folders, args.user, args.n)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lagcl")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_run_options(sub.add_parser("run", help="run the pipeline (same as make pipeline)"))
    add_run_options(sub.add_parser("status", help="each stage's state, fingerprint, rows and spend"))
    add_run_options(sub.add_parser("compare", help="Table 2/3 view of every finished run of the dataset"))
    rec = sub.add_parser("recommend", help="one user's profile and recommendations, with the level behind each")
    add_run_options(rec)
    rec.add_argument("--user", required=True, help="the dataset's original user id")
    rec.add_argument("--n", type=int, default=None, help="show the first N (default: all the run kept)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "status":
            return cmd_status(args)
        if args.cmd == "compare":
            return cmd_compare(args)
        if args.cmd == "recommend":
            return cmd_recommend(args)
        from flows.pipeline import run_from_args

        return run_from_args(args)
    except LagclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
