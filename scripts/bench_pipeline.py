"""Per-stage seconds, peak memory and rows of the whole pipeline at the paper's Table-1 shapes, the growth
of each stage's cost with its work, and the projected wall time of a full run on each shape.

    python -m scripts.bench_pipeline --shapes ml-100k,ml-1m@0.25,ml-1m,steam [--epochs 2] [--out DIR]
    python -m scripts.bench_pipeline --report DIR        # tables again from DIR/results.json

A shape is `ml-100k` (the real data) or a Table-1 shape of scripts/synthetic_data.py with an optional
scale (`ml-1m@0.25`: a quarter of the users and interactions, the same items and density). Each shape
runs `python -m flows.pipeline --engine embedding` with the defaults except `gcl.epochs` (a few epochs:
the per-epoch cost is measured, the full run's is projected) in its own `cache_dir` and PREFECT_HOME, ONE
STAGE PER PROCESS: the k-th process has the stages after the k-th switched off
(`pipeline.stages.<s>=false`), so the stages before it are found complete and only the k-th runs; its
peak RSS (the pipeline process's own `ru_maxrss`) is that stage's. Seconds are the stage manifest's own
(`seconds`) beside the process wall time (which adds Python start-up and Prefect's temporary server).
`/proc/loadavg` is recorded before and after each stage: on a shared machine seconds are upper bounds.

Results: DIR/results.json and DIR/results.md (per-stage table, growth exponents, projections to the four
Table-1 shapes, see `project`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
STAGE_ORDER = ["prepare", "profiles", "augment", "groups", "control", "gcl", "rerank", "evaluate"]
SWITCHABLE = STAGE_ORDER[1:]  # prepare always runs
# Each stage's natural work variable (what its cost should grow with, at most linearly):
WORK = {
    "prepare": ("interactions", lambda s: s["interactions"]),
    "profiles": ("users + items", lambda s: s["users"] + s["items"]),
    "augment": ("cold users x candidates", lambda s: s["cold_users"] * s["n_candidates"]),
    "groups": ("users + items", lambda s: s["users"] + s["items"]),
    "control": ("train positives x epochs", lambda s: s["train_positives"] * s["epochs_control"]),
    "gcl": ("train positives x epochs (all variants)", lambda s: s["train_positives"] * s["epochs_gcl"]),
    # the encoder reads each user's and each candidate/history item's profile once; the head scores users x |C_u|
    "rerank": ("users x |C_u|", lambda s: s["users"]),
    "evaluate": ("users x items", lambda s: s["users"] * s["items"]),
}
# The pipeline process's own peak RSS (not its children's: Prefect's temporary server is one): written at exit.
_WRAPPER = ("import atexit, json, os, resource, runpy, sys\n"
            "atexit.register(lambda: open(os.environ['LAGCL_BENCH_RSS'], 'w').write(json.dumps("
            "{'self_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})))\n"
            "sys.argv = ['flows.pipeline'] + sys.argv[1:]\n"
            "runpy.run_module('flows.pipeline', run_name='__main__', alter_sys=True)\n")


def parse_shape(text: str) -> tuple[str, float]:
    name, _, scale = text.partition("@")
    return name, float(scale) if scale else 1.0


def label(name: str, scale: float) -> str:
    return name if scale == 1.0 else f"{name}@{scale:g}"


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _dataset_args(name: str, scale: float, workdir: Path) -> tuple[list[str], float | None]:
    """`flows.pipeline` arguments that read the shape, writing its synthetic files first (seconds to write)."""
    if name == "ml-100k":
        return ["--data", "ml-100k"], None
    from scripts.synthetic_data import write

    folder = workdir / "data" / label(name, scale)
    took = None
    if not (folder / "ratings.parquet").is_file():
        t0 = time.perf_counter()
        write(name, folder, seed=0, scale=scale)
        took = round(time.perf_counter() - t0, 2)
    return ["--data", "synthetic", "--set", f"data.path={folder}"], took


def _manifest(cache: Path, stage: str) -> dict | None:
    found = sorted(cache.glob(f"*/{stage}/*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_stage(stage: str, args: list[str], cache: Path, env: dict[str, str], log: Path,
              max_rss_mib: float | None = None) -> dict:
    """The pipeline with the stages up to `stage` switched on, in a fresh process; its measurements."""
    off = SWITCHABLE[SWITCHABLE.index(stage) + 1:] if stage in SWITCHABLE else SWITCHABLE
    cmd = [sys.executable, "-c", _WRAPPER, *args, *[a for s in off for a in ("--set", f"pipeline.stages.{s}=false")]]
    rss_file = log.with_suffix(".rss.json")
    env = {**env, "LAGCL_BENCH_RSS": str(rss_file)}
    load_before = _loadavg()
    t0 = time.perf_counter()
    over = None
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mib(proc.pid)
            if max_rss_mib and rss > max_rss_mib and over is None:
                # the machine is shared: a stage past the limit is stopped, not left to the kernel's OOM killer
                over = rss
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    manifest = _manifest(cache, stage)
    own = json.loads(rss_file.read_text())["self_kib"] if rss_file.is_file() else None
    row = {"stage": stage, "rc": rc, "process_s": round(wall, 2), "load_before": load_before,
           "load_after": _loadavg(), "peak_rss_mib": round(own / 1024, 1) if own else None,
           "peak_rss_tree_mib": round(usage.ru_maxrss / 1024, 1),
           # CPU seconds of the process (not of its children) move less than wall seconds with the machine's load
           "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "log": str(log)}
    if over is not None:
        row["stopped"] = f"RSS {over:,.0f} MiB passed --max-rss-gib; killed"
        row["peak_rss_mib"] = round(max(over, usage.ru_maxrss / 1024), 1)
    if manifest is not None and rc == 0:
        row["seconds"] = manifest.get("seconds")
        row["rows"] = sum((manifest.get("rows") or {}).values())
        row["tables"] = manifest.get("rows")
        row["meta"] = {k: v for k, v in (manifest.get("meta") or {}).items()
                       if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return row


def sizes(cache: Path, cold_threshold: int = 30) -> dict:
    """Users, items, interactions, training positives and cold-start users of the prepared data."""
    m = _manifest(cache, "prepare")
    folder = next(cache.glob(f"*/prepare/{m['fingerprint']}"))
    s = m["meta"]["stats"]
    inter = pl.read_parquet(folder / "interactions.parquet")
    pos = inter.filter((pl.col("split") == "train") & (pl.col("sign") == 1)).group_by("user").len()
    counts = dict(pos.iter_rows())
    users = inter["user"].unique().to_list()
    cold = sum(1 for u in users if counts.get(u, 0) < cold_threshold)
    return {"users": s["users"], "items": s["items"], "interactions": s["interactions"],
            "positives": s["positives"], "train_positives": int(s["positives_train"]), "cold_users": cold}


def epochs_run(cache: Path, stage: str) -> tuple[int, dict[str, float]]:
    """Epochs trained in the stage (all variants) and the mean train/eval seconds per epoch."""
    found = list(cache.glob(f"*/{stage}/*/epochs.parquet"))
    if not found:
        return 0, {}
    ep = pl.read_parquet(found[0])
    per = {c: round(float(ep[c].mean()), 3) for c in ("train_seconds", "eval_seconds") if c in ep.columns}
    if "variant" in ep.columns:
        per["variants"] = ep["variant"].n_unique()
    return ep.height, per


def bench_shape(text: str, epochs: int, workdir: Path, overrides: list[str], max_rss_mib: float | None = None,
                out: dict | None = None, on_stage=lambda: None) -> dict:
    """One shape, stage by stage, into `out` (filled in place: `on_stage()` after each stage saves it)."""
    name, scale = parse_shape(text)
    lab = label(name, scale)
    base = workdir / lab
    cache, logs = base / "cache", base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data_args, wrote_s = _dataset_args(name, scale, workdir)
    args = [*data_args, "--engine", "embedding", "--set", f"cache_dir={cache}", "--set", f"gcl.epochs={epochs}",
            *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "PREFECT_HOME": str(base / "prefect"), "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "1"}
    out = {} if out is None else out
    out.update({"shape": lab, "name": name, "scale": scale, "epochs_cap": epochs, "synthetic_write_s": wrote_s,
                "command": "python -m flows.pipeline " + " ".join(args), "stages": []})
    for stage in STAGE_ORDER:
        row = run_stage(stage, args, cache, env, logs / f"{stage}.log", max_rss_mib)
        out["stages"].append(row)
        print(f"{lab} {stage}: rc {row['rc']}, {row.get('seconds')} s (process {row['process_s']} s), peak RSS "
              f"{row['peak_rss_mib']} MiB, rows {row.get('rows')}, load {row['load_before'][0]}->"
              f"{row['load_after'][0]}", flush=True)
        if row["rc"] != 0:
            out["failed_at"] = stage
            break
        if stage == "prepare":
            from lagcl.config import load_config

            # a like and a dislike sample per cold user
            out["sizes"] = {**sizes(cache), "n_candidates": 2 * load_config().augment.n_candidates}
        if stage in ("control", "gcl"):
            out["sizes"][f"epochs_{stage}"], out[f"per_epoch_{stage}"] = epochs_run(cache, stage)
        on_stage()
    return out


# --- growth and projections ----------------------------------------------------------------------------------
def exponent(t1: float, t2: float, w1: float, w2: float) -> float | None:
    if min(t1, t2, w1, w2) <= 0 or w1 == w2:
        return None
    return math.log(t2 / t1) / math.log(w2 / w1)


def _per_epoch(r: dict, stage: str) -> float | None:
    per = r.get(f"per_epoch_{stage}") or {}
    t = per.get("train_seconds", 0.0) + per.get("eval_seconds", 0.0)
    return t or None


def growth(results: list[dict]) -> list[dict]:
    """Per stage, the exponent b of seconds ~ work^b between the smallest and the largest run of one shape;
    for control and gcl also of one epoch's seconds against the training positives."""
    rows = []
    by_name: dict[str, list[dict]] = {}
    for r in results:
        if "sizes" in r:
            by_name.setdefault(r["name"], []).append(r)
    for name, rs in by_name.items():
        for stage in STAGE_ORDER:
            # the smallest and the largest run of the shape that finished the stage (a run may stop early)
            done = [r for r in rs if any(x["stage"] == stage and x.get("seconds") for x in r["stages"])]
            small, large = min(done, key=lambda r: r["scale"], default=None), max(done, key=lambda r: r["scale"],
                                                                                  default=None)
            if small is None or small["scale"] == large["scale"]:
                continue
            a, b = (next(x for x in r["stages"] if x["stage"] == stage and x.get("seconds")) for r in (small, large))
            wname, w = WORK[stage]
            w1, w2 = w(small["sizes"]), w(large["sizes"])
            e = exponent(a["seconds"], b["seconds"], w1, w2)
            er = exponent(a["peak_rss_mib"], b["peak_rss_mib"], w1, w2) if a["peak_rss_mib"] else None
            rows.append({"shape": name, "from": small["shape"], "to": large["shape"], "stage": stage, "work": wname,
                         "work_ratio": round(w2 / w1, 3) if w1 else None,
                         "seconds_ratio": round(b["seconds"] / a["seconds"], 3),
                         "exponent": None if e is None else round(e, 2),
                         "rss_exponent": None if er is None else round(er, 2),
                         "faster_than_work": e is not None and e > 1.2})
            if stage in ("control", "gcl") and _per_epoch(small, stage) and _per_epoch(large, stage):
                t1, t2 = _per_epoch(small, stage), _per_epoch(large, stage)
                p1, p2 = small["sizes"]["train_positives"], large["sizes"]["train_positives"]
                e = exponent(t1, t2, p1, p2)
                rows.append({"shape": name, "from": small["shape"], "to": large["shape"], "stage": f"{stage} epoch",
                             "work": "train positives (one epoch)", "work_ratio": round(p2 / p1, 3),
                             "seconds_ratio": round(t2 / t1, 3), "exponent": None if e is None else round(e, 2),
                             "rss_exponent": None, "faster_than_work": e is not None and e > 1.2})
    return rows


def project(results: list[dict], epochs_full: dict[str, int]) -> list[dict]:
    """Projected CPU seconds of a full run (the defaults: full GCL epochs) at each Table-1 shape, per stage.

    Per stage, the reference is the largest run of the same shape that finished the stage, else the nearest
    such run in users, items, interactions and interactions per user. The target has Table 1's users, items and interactions; its training positives and
    cold-start users keep the reference's ratios (to interactions, to users). A stage's seconds scale with
    its work variable to the power max(1, its fitted exponent) (below 1 the fixed costs flatter the fit:
    linear is the safer bound); control and gcl are their fixed part (stage seconds less the measured
    epochs) plus one epoch's seconds, scaled by the per-epoch exponent, times the full epochs of each
    variant the run trained."""
    from scripts.synthetic_data import SHAPES

    exps: dict[str, float] = {}
    for row in growth(results):
        if row["exponent"] is not None:
            exps[row["stage"]] = max(exps.get(row["stage"], 1.0), row["exponent"])
    measured = [r for r in results if r["name"] != "ml-100k" and "sizes" in r]
    out = []
    for shape, (n_u, n_i, n_x) in SHAPES.items():
        row = {"shape": shape, "references": {}, "stages": {}}
        for stage in STAGE_ORDER:
            done = [r for r in measured if any(x["stage"] == stage and x.get("seconds") for x in r["stages"])]
            if not done:
                continue
            same = [r for r in done if r["name"] == shape]
            # interactions per user decide the cold-start share, so they count beside the three sizes
            ref = max(same, key=lambda r: r["scale"]) if same else min(done, key=lambda r: sum(
                abs(math.log(v / r["sizes"][k])) for k, v in (("users", n_u), ("items", n_i), ("interactions", n_x)))
                + abs(math.log((n_x / n_u) / (r["sizes"]["interactions"] / r["sizes"]["users"]))))
            rs = ref["sizes"]
            sz = {**rs, "users": n_u, "items": n_i, "interactions": n_x,
                  "train_positives": round(n_x * rs["train_positives"] / rs["interactions"]),
                  "cold_users": round(n_u * rs["cold_users"] / rs["users"])}
            t = next(x for x in ref["stages"] if x["stage"] == stage)["seconds"]
            if stage in ("control", "gcl"):
                per = ref.get(f"per_epoch_{stage}") or {}
                one = _per_epoch(ref, stage) or 0.0
                fixed = max(0.0, t - one * rs.get(f"epochs_{stage}", 0))
                ratio = sz["train_positives"] / rs["train_positives"]
                t = (fixed * ratio + one * ratio ** max(1.0, exps.get(f"{stage} epoch", 1.0))
                     * per.get("variants", 1) * epochs_full[stage])
            else:
                _, w = WORK[stage]
                t = t * (w(sz) / w(rs)) ** max(1.0, exps.get(stage, 1.0))
            row["stages"][stage] = round(t, 1)
            row["references"][stage] = ref["shape"]
            row["target_sizes"] = sz
        if row["stages"]:
            row["total_s"] = round(sum(row["stages"].values()), 1)
            out.append(row)
    return out


def _fmt_s(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def markdown(doc: dict) -> str:
    lines = [f"machine: {doc['machine']}", ""]
    lines += ["| shape | users | items | interactions | train positives | cold users | stage | seconds (manifest) | "
              "process s (CPU s) | peak RSS MiB | rows | load 1-min before / after |", "|---|" + "---:|" * 5 + "---|" + "---:|" * 4 + "---|"]
    for r in doc["results"]:
        s = r.get("sizes", {})
        for i, st in enumerate(r["stages"]):
            head = ([r["shape"], f"{s.get('users', 0):,}", f"{s.get('items', 0):,}", f"{s.get('interactions', 0):,}",
                     f"{s.get('train_positives', 0):,}", f"{s.get('cold_users', 0):,}"] if i == 0 else [""] * 6)
            lines.append("| " + " | ".join(head + [st["stage"], _fmt_s(st.get("seconds")), _fmt_s(st["process_s"]) + (f" ({st['process_cpu_s']:,.1f})" if "process_cpu_s" in st else ""),
                                                   _fmt_s(st["peak_rss_mib"]), f"{st.get('rows', 0) or 0:,}",
                                                   f"{st['load_before'][0]:.1f} / {st['load_after'][0]:.1f}"]) + " |")
    g = doc.get("growth") or []
    if g:
        lines += ["", "| shape | sizes | stage | work variable | work ratio | seconds ratio | exponent (seconds) | "
                  "exponent (peak RSS) | faster than its work? |", "|---|---|---|---|---:|---:|---:|---:|---|"]
        for row in g:
            lines.append(f"| {row['shape']} | {row['from']} -> {row['to']} | {row['stage']} | {row['work']} | "
                         f"{row['work_ratio']} | {row['seconds_ratio']} | {row['exponent']} | {row['rss_exponent']} | "
                         f"{'**yes**' if row['faster_than_work'] else 'no'} |")
    p = doc.get("projections") or []
    if p:
        lines += ["", "| shape (Table 1) | users x items, interactions | scaled from | " + " | ".join(STAGE_ORDER)
                  + " | total, CPU | one GPU |", "|---|---|---|" + "---:|" * (len(STAGE_ORDER) + 1) + "---|"]
        for row in p:
            t = row["target_sizes"]
            by_ref: dict[str, list[str]] = {}
            for stage, ref in row["references"].items():
                by_ref.setdefault(ref, []).append(stage)
            main_ref = max(by_ref, key=lambda r: len(by_ref[r]))
            refs = "; ".join([main_ref] + [f"{r} ({', '.join(st)})" for r, st in by_ref.items() if r != main_ref])
            lines.append(f"| {row['shape']} | {t['users']:,} x {t['items']:,}, {t['interactions']:,} | {refs} | "
                         + " | ".join(_fmt_s(row["stages"].get(s)) for s in STAGE_ORDER)
                         + f" | {_fmt_s(row['total_s'])} s ({row['total_s'] / 3600:.1f} h) | not measured |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="ml-100k,ml-1m@0.25,ml-1m,steam")
    p.add_argument("--epochs", type=int, default=2, help="gcl.epochs of the measured runs (a few)")
    p.add_argument("--full-epochs", default="control=110,gcl=119",
                   help="epochs per trained variant in a full run, for the projections")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lagcl-bench-pipeline"))
    p.add_argument("--out", type=Path, default=None, help="results.json / results.md here (default: workdir)")
    p.add_argument("--report", type=Path, default=None, help="only redo the tables from DIR/results.json")
    p.add_argument("--merge", default="", help="with --report: first join these results.json files (runs made "
                                               "apart) into DIR/results.json")
    p.add_argument("--max-rss-gib", type=float, default=12.0,
                   help="stop a stage whose pipeline process passes this resident size (a shared machine)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    epochs_full = {k: int(v) for k, v in (x.split("=") for x in a.full_epochs.split(","))}
    out = a.report or a.out or a.workdir
    out.mkdir(parents=True, exist_ok=True)
    if a.report and a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge.split(",")]
        doc = {**parts[0], "results": [r for d in parts for r in d["results"]],
               "machine": "; ".join(d["machine"] for d in parts),
               "runs": [{k: d.get(k) for k in ("started_at", "finished_at")} for d in parts]}
    elif a.report:
        doc = json.loads((out / "results.json").read_text())
    else:
        doc = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
                          f"load {' '.join(map(str, _loadavg()))} at start",
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "epochs_full": epochs_full,
               "results": []}
        def save() -> None:
            (out / "results.json").write_text(json.dumps(doc, indent=2))

        for shape in filter(None, a.shapes.split(",")):
            doc["results"].append({})
            bench_shape(shape, a.epochs, a.workdir, a.overrides, a.max_rss_gib * 1024, doc["results"][-1], save)
        doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["growth"] = growth(doc["results"])
    doc["projections"] = project(doc["results"], doc.get("epochs_full", epochs_full))
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "results.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
