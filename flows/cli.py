"""`lagcl` command line: run the pipeline, show each stage's state.

    lagcl run --data ml-100k [--model xsimgcl --rank off --set gcl.lr=0.002] [--from-stage gcl] [--dry-run]
    lagcl status --data ml-100k [the run's configuration options: --engine --model --rank --ablation --set]
    lagcl compare --data ml-100k [--set cache_dir=...]   (every finished run side by side: backbone, levels, p)
    python -m flows.tables 3 --seeds 5 (the paper's Table 3 over seeds, intervals, paired tests: make table3)
    lagcl recommend --user 196 [--n 20] [the run's configuration options]   (one user's recommendations, and why)

`lagcl <command> --help` lists each option with its values and default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.options import add_config_options, add_run_options, add_store_options, positive_int, run_config
from flows.summary import comparison_rows, format_comparison
from lagcl.artifacts import read_manifest
from lagcl.config import load_config
from lagcl.errors import LagclError
from tasks.base import make_plan
from lagcl.meta import RequestsMeta, meta_of


def stage_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    cfg = run_config(args)
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
        usage = RequestsMeta.of(meta).usage
        rows.append({
            "stage": stage, "state": state, "fingerprint": fp,
            "rows": sum((manifest or {}).get("rows", {}).values()),
            "seconds": (manifest or {}).get("seconds"),
            "spend_usd": usage.get("cost_usd", 0.0),
            "path": str(path),
        })
    return rows


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = load_config(data=args.data, overrides=args.overrides)  # every run of the dataset: only its store matters
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
    cfg = run_config(args)
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


def unknown_options_message(extra: list[str], cmd: argparse.ArgumentParser, run: argparse.ArgumentParser) -> str:
    """Which of the unrecognized arguments are `run`'s own options (a command that runs nothing does not take
    them), and which are not options at all."""
    def options(parser: argparse.ArgumentParser) -> set[str]:
        return {o for a in parser._actions for o in a.option_strings}

    run_only = options(run) - options(cmd)
    given = [x.split("=", 1)[0] for x in extra if x.startswith("-")]
    theirs = [o for o in given if o in run_only]
    if theirs:
        return (f"`{cmd.prog}` does not use {', '.join(theirs)} (options of `lagcl run`); it takes "
                f"{', '.join(sorted(options(cmd) - {'-h', '--help'}))}")
    return f"unrecognized arguments: {' '.join(extra)}"


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `lagcl` parser and each command's own: the options it uses, each with its values and default."""
    p = argparse.ArgumentParser(prog="lagcl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,status,compare,recommend}")
    commands = {
        "run": ("run the pipeline (same as make pipeline)", add_run_options),
        "status": ("each stage's state, fingerprint, rows and spend for the run these options describe (make status)",
                   add_config_options),
        "compare": ("Table 2/3 view of every finished run of the dataset (make compare)", add_store_options),
        "recommend": ("one user's profile and recommendations, with the level behind each (make recommend)",
                      add_config_options),
    }
    subs = {}
    for name, (text, add) in commands.items():
        subs[name] = sub.add_parser(name, help=text, description=text)
        add(subs[name])
    rec = subs["recommend"]
    rec.add_argument("--user", required=True, help="the dataset's original user id, e.g. 196 (make: USER=)")
    rec.add_argument("--n", type=positive_int, default=None, metavar="N",
                     help="show the first N recommendations, a positive integer (default: all the run kept, "
                          "recommend.n; make: N=)")
    return p, subs


def main(argv: list[str] | None = None) -> int:
    p, subs = parsers()
    args, extra = p.parse_known_args(argv)
    if extra:
        subs[args.cmd].error(unknown_options_message(extra, subs[args.cmd], subs["run"]))
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
