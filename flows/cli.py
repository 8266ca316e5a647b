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

from lagcl.artifacts import read_manifest
from lagcl.errors import LagclError
from lagcl.stats import format_p, mark


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


def comparison_rows(store) -> list[dict[str, object]]:
    """Table 2 / Table 3 view: every finished control (no level), gcl run (levels kept on validation) and
    evaluate run (CF + reranker when kept) of a dataset in the artifact store, with which levels it kept and
    its test change against its own control."""
    rows = []
    for stage in ("control", "gcl", "evaluate"):
        for folder in store.iter_stage_dirs(stage):
            meta = (read_manifest(folder) or {}).get("meta")
            if not meta or "test_recall@20" not in meta:
                continue
            on = lambda v: "?" if v is None else ("on" if v else "off")  # noqa: E731
            control = meta.get("control_test_recall@20") if stage != "control" else meta["test_recall@20"]
            rows.append({
                "stage": stage, "backbone": meta.get("backbone"),
                "data": on(meta.get("data_level", meta.get("augmented"))), "rank": on(meta.get("rank_level")),
                "rerank": on(meta.get("rerank_level")) if stage == "evaluate" else "off",
                "groups": str(meta.get("groups", "")).split(" ")[0] if stage == "gcl" else "",
                "recall@20": meta["test_recall@20"], "ndcg@20": meta["test_ndcg@20"],
                "vs_control": (meta["test_recall@20"] - control) / control if control else None,
                "p": _last_kept_p(meta) if stage != "control" else None,
                "folder": folder.name,
            })
    return sorted(rows, key=lambda r: (str(r["backbone"]), r["stage"] != "control", r["data"], r["rank"],
                                       r["rerank"], r["folder"]))


def _last_kept_p(meta: dict) -> float | None:
    """The paired test's p of the run's last kept level against the control (None: no level kept, or a rerank
    level, whose fused ranking has no per-user test)."""
    kept = [r for r in meta.get("levels", []) if r.get("kept") and r.get("level") != "control"]
    return kept[-1].get("test_recall@20_p") if kept else None


def format_comparison(rows: list[dict[str, object]], dataset: str) -> str:
    lines = [f"finished runs of {dataset} in the store (test, all-rank; levels = those kept on validation; "
             "R@20 change against the backbone's control, p of the paired test over users, * < 0.05, ** < 0.01):",
             f"  {'backbone':<9} {'stage':<8} {'data':<5} {'rank':<5} {'groups':<10} {'rerank':<6} {'Recall@20':>9} "
             f"{'NDCG@20':>8} {'vs ctrl':>10} {'p':>7}  folder under cache/<dataset>/<stage>"]
    for r in rows:
        p = r.get("p")
        vs = (f"{r['vs_control']:+.1%}" + (mark(p) if p is not None else "")) if r["vs_control"] is not None else "-"
        lines.append(f"  {r['backbone']!s:<9} {r['stage']:<8} {r['data']:<5} {r['rank']:<5} {r['groups']:<10} "
                     f"{r['rerank']:<6} {r['recall@20']:>9.4f} {r['ndcg@20']:>8.4f} {vs:>10} {format_p(p):>7}  "
                     f"{r['folder']}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from flows.pipeline import build_config
    from tasks.base import make_plan

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
    from flows.pipeline import build_config
    from tasks.base import make_plan

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
    fps = read_manifest(ev)["meta"].get("fingerprints") or {}
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
