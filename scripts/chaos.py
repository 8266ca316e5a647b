"""Crash-anywhere resume: SIGKILL the ML-100K pipeline at seeded random points inside every stage, restart it
until it finishes, and check that nothing was lost or paid twice (RELIABILITY.md).

    python -m scripts.chaos --kills 8 --seed 1 --scale ci       # `make chaos`
    python -m scripts.chaos --kills 24 --seed 7 --scale local   # `make chaos CHAOS_SCALE=local`

It starts the local LLM protocol server (lagcl/llm/protocol_server.py, with `pipeline_model`: a valid,
deterministic answer to every prompt) and runs `python -m flows.pipeline --engine openai` against it, with a
fake API key, in its own cache and Prefect home under --workdir:

1. reference: one uninterrupted run;
2. chaos: the same command in a fresh cache. For each of the N kills a target stage is picked (round robin
   over the stages, in order); the harness waits until that stage is running in this attempt (its folder's
   lock is held, seen in /proc/locks, which does not touch the lock), waits a seeded random part of the
   stage's reference duration, and SIGKILLs the whole process group. Then the same command again, until a
   run ends on its own;
3. checks: every table of every stage equal to the reference (byte-identical, or equal in content where the
   file carries wall-clock timings, listed in the report), the metrics identical, no LLM request that was
   answered and cached asked again (requests cut off by a kill are resent once; counted exactly), no temp
   files left, and every folder with a manifest verifies against its checksums.

Exit status 0 when every check passes; the report goes to <workdir>/chaos-report.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from lagcl.artifacts import MANIFEST, is_complete, read_manifest
from lagcl.config import load_config
from lagcl.data.fetch import ensure_ml100k
from lagcl.llm.protocol_server import LLMServer, pipeline_model
from tasks.base import make_plan

REPO = Path(__file__).resolve().parent.parent

FAKE_KEY = "sk-lagcl-chaos-FAKE-5f4e3d2c1b0a"
KEY_ENV = "LAGCL_CHAOS_API_KEY"

# Scales: overrides on top of the default run (ML-100K, LightGCN, every level on). `ci` keeps the whole
# pipeline but asks the LLM stages and the trainers for little work; `local` is the full ML-100K data level
# (every profile, 1024 candidates per cold-start user scored 32 per request, the default groups) with
# shorter training (20 epochs, a 400-pair reranker on 100 users).
SCALES: dict[str, list[str]] = {
    "ci": ["augment.cold_threshold=6", "augment.n_candidates=128", "augment.items_per_call=16",
           "augment.shard_size=16", "profiles.shard_size=128", "groups.batch_size=100",
           "gcl.epochs=4", "gcl.patience=50", "rerank.max_train_pairs=160", "rerank.max_users=40",
           "rerank.candidates=10"],
    "local": ["gcl.epochs=20", "gcl.patience=50", "rerank.max_train_pairs=400", "rerank.max_users=100"],
}


@dataclass
class Attempt:
    n: int
    target: str | None  # stage the kill was aimed at (None: the final run, never killed)
    landed: str | None = None  # stage whose lock was held at the kill
    delay_s: float = 0.0  # seconds into the stage when killed
    seconds: float = 0.0
    returncode: int | None = None
    received: int = 0  # whole model requests that reached the server during this attempt
    cut_while_sending: int = 0  # requests whose body never fully arrived (the kill came mid-send)
    answered: int = 0  # of those, answers the server wrote completely
    cached: int = 0  # new rows in the LLM response cache after this attempt
    lost_in_flight: int = 0  # received - cached: requests the kill cut off before their answer was cached
    lost_after_answer: int = 0  # of those, the server had written the whole answer (the client died reading it)
    temp_files_after: int = 0  # temp files the kill left behind (removed when the stage reopens)


@dataclass
class Report:
    scale: str
    kills: int
    seed: int
    reference_seconds: float = 0.0
    chaos_seconds: float = 0.0
    reference_requests: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class Runner:
    def __init__(self, workdir: Path, server: LLMServer, overrides: list[str]) -> None:
        self.workdir = workdir
        self.server = server
        self.overrides = overrides

    def sets(self, cache: Path) -> list[str]:
        return [f"cache_dir={cache}", f"data.path={REPO / 'cache' / 'raw' / 'ml-100k'}",
                f"engine.base_url={self.server.base_url}/v1", "engine.model=chaos-model",
                f"engine.api_key_env={KEY_ENV}", "engine.requests_per_minute=null", *self.overrides]

    def command(self, cache: Path) -> list[str]:
        args = [sys.executable, "-m", "flows.pipeline", "--engine", "openai"]
        for s in self.sets(cache):
            args += ["--set", s]
        return args

    def env(self, prefect_home: Path) -> dict[str, str]:
        env = {**os.environ, "PREFECT_HOME": str(prefect_home), "DO_NOT_TRACK": "1", KEY_ENV: FAKE_KEY,
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PREFECT_API_URL", None)  # each run starts its own temporary Prefect server
        return env

    def start(self, cache: Path, prefect_home: Path, log: Path) -> subprocess.Popen:
        prefect_home.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")
        return subprocess.Popen(self.command(cache), cwd=REPO, env=self.env(prefect_home), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def held_flocks() -> set[tuple[int, int]]:
    """(pid, inode) of every FLOCK held, from /proc/locks: looking does not take the lock."""
    out = set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK":
            out.add((int(parts[4]), int(parts[5].split(":")[-1])))
    return out


def running_stage(stage_dirs: dict[str, Path]) -> str | None:
    """The stage whose lock a live run holds now. The lock must be held by the very process its `.lock` file
    names (lagcl/artifacts.py writes it): an inode number alone can also match a lock held on another file
    system (CI once saw a finished stage "running" that way, and the kill aimed at it landed two stages later)."""
    held = held_flocks()
    for stage, path in stage_dirs.items():
        lock = path / ".lock"
        try:
            holder = re.match(r"process (\d+)", lock.read_text())
            if (holder and (int(holder.group(1)), lock.stat().st_ino) in held
                    and not (path / MANIFEST).is_file()):
                return stage
        except FileNotFoundError:
            continue
    return None


def cache_rows(cache: Path) -> int:
    db = cache / "llm" / "responses.sqlite"
    if not db.is_file():
        return 0
    con = sqlite3.connect(db, timeout=60)
    try:
        return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    finally:
        con.close()


def temp_files(cache: Path) -> list[Path]:
    """What artifacts.py leaves while writing (`.<name>.tmp-<pid>`), and the Trainer's `tmp-checkpoint-*`."""
    return sorted([*cache.rglob(".*.tmp-*"), *cache.rglob("tmp-checkpoint-*")])


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + 30  # every process of the group (the temporary Prefect server too) is gone
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def body_digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# comparison ------------------------------------------------------------------------------------------
TIMING_WORDS = ("seconds", "finished_at", "_time", "runtime", "per_second", "total_flos")


def _is_timing(key: str) -> bool:
    return any(w in key for w in TIMING_WORDS)


def _strip_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not _is_timing(str(k))}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _load_pt(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _same_tree(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        ka = {k for k in a if not _is_timing(str(k))}
        kb = {k for k in b if not _is_timing(str(k))}
        return ka == kb and all(_same_tree(a[k], b[k]) for k in ka)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, pl.DataFrame) and isinstance(b, pl.DataFrame):
        return _same_frame(a, b)
    return a == b or (a != a and b != b)  # NaN == NaN here


def _same_frame(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    keep = [c for c in a.columns if not _is_timing(c)]
    return [c for c in b.columns if not _is_timing(c)] == keep and a.select(keep).equals(b.select(keep))


def same_content(ref: Path, got: Path) -> tuple[bool, str]:
    """Files whose bytes differ: equal once wall-clock timings are left out? (how, and the verdict)"""
    suffix = ref.suffix
    if suffix == ".parquet":
        return _same_frame(pl.read_parquet(ref), pl.read_parquet(got)), "parquet rows, timing columns left out"
    if suffix in (".pt", ".pth", ".bin") and ref.name not in ("training_args.bin",):
        return _same_tree(_load_pt(ref), _load_pt(got)), "tensors and values, timing entries left out"
    if suffix == ".json":
        return (_strip_timing(json.loads(ref.read_text())) == _strip_timing(json.loads(got.read_text())),
                "JSON, timing keys left out")
    if ref.name == "training_args.bin":  # pickled TrainingArguments: holds the run's output paths
        a, b = _load_pt(ref), _load_pt(got)
        # compared by repr: some values (the accelerator state) have no __eq__
        da = {k: repr(v) for k, v in vars(a).items() if "dir" not in k}
        db = {k: repr(v) for k, v in vars(b).items() if "dir" not in k}
        return da == db, "training arguments, the output folder (the run's cache path) left out"
    if suffix == ".md":
        import re

        def norm(p: Path) -> str:  # timings and the run's own folders in the report text
            text = p.read_text().replace(str(p.parent.parent.parent.parent), "<cache>")
            return re.sub(r"\d+(\.\d+)? s\b", "<t> s", text)
        return norm(ref) == norm(got), "text, timings and folder paths left out"
    return False, "binary, no content comparison"


def compare_stages(ref_cache: Path, got_cache: Path, stages: dict[str, str], dataset: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage, fp in stages.items():
        a, b = ref_cache / dataset / stage / fp, got_cache / dataset / stage / fp
        ma, mb = read_manifest(a), read_manifest(b)
        entry: dict[str, Any] = {"files": 0, "byte_identical": 0, "equal_content": [], "different": []}
        if ma is None or mb is None:
            entry["different"].append("manifest missing")
            out[stage] = entry
            continue
        if sorted(ma["files"]) != sorted(mb["files"]):
            entry["different"].append(f"file lists differ: {sorted(set(ma['files']) ^ set(mb['files']))[:10]}")
        if ma.get("rows") != mb.get("rows"):
            entry["different"].append("row counts differ")
        for name in sorted(set(ma["files"]) & set(mb["files"])):
            entry["files"] += 1
            if ma["files"][name] == mb["files"][name]:
                entry["byte_identical"] += 1
                continue
            ok, how = same_content(a / name, b / name)
            (entry["equal_content"] if ok else entry["different"]).append(f"{name} ({how})")
        meta_a, meta_b = _strip_timing(ma.get("meta", {})), _strip_timing(mb.get("meta", {}))
        # what this particular run did (answered now / resumed / resumed_from) differs by design after kills, and so
        # does what the stage cost over its attempts (llm_paid_usd: requests cut off by a kill are paid again)
        volatile = ("answered_this_run", "resumed", "sent_this_run", "resumed_from_epoch", "usage", "llm_paid_usd",
                    "partition_requests_this_run", "similarity_sent_this_run", "reasked_ids_this_run",
                    "unknown_ids_this_run", "duplicate_ids_this_run", "partition_failures_this_run", "resumed_from")

        def result_meta(m: Any) -> Any:
            if isinstance(m, dict):
                return {k: result_meta(v) for k, v in m.items() if k not in volatile}
            return m
        if result_meta(meta_a) != result_meta(meta_b):
            entry["different"].append("manifest meta (results) differ")
        out[stage] = entry
    return out


def metrics(cache: Path, dataset: str, stages: dict[str, str]) -> dict[str, list]:
    out = {}
    for stage in ("control", "gcl", "evaluate"):
        if stage in stages:
            path = cache / dataset / stage / stages[stage] / "metrics.parquet"
            out[stage] = pl.read_parquet(path).rows() if path.is_file() else None
    return out


# the harness -----------------------------------------------------------------------------------------
def run_reference(runner: Runner, cache: Path, prefect: Path, log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.time()
    proc = runner.start(cache, prefect, log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc = -9
    return rc, time.time() - t0


def chaos(args: argparse.Namespace) -> Report:
    work = Path(args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ensure_ml100k(REPO / "cache" / "raw" / "ml-100k")
    report = Report(args.scale, args.kills, args.seed)
    rng = random.Random(args.seed)
    overrides = SCALES[args.scale] + list(args.set or [])
    with LLMServer(pipeline_model) as server:
        runner = Runner(work, server, overrides)
        ref_cache, got_cache = work / "reference" / "cache", work / "chaos" / "cache"
        cfg = load_config(engine="openai", overrides=runner.sets(got_cache))
        plan = make_plan(cfg)
        stages = dict(plan.fingerprints)
        dataset = cfg.data.name
        stage_dirs = {s: got_cache / dataset / s / fp for s, fp in stages.items()}

        # 1. reference ------------------------------------------------------------------------------
        print(f"chaos: reference run ({args.scale} scale) ...", flush=True)
        rc, secs = run_reference(runner, ref_cache, work / "reference" / "prefect", work / "reference.log",
                                 args.timeout)
        report.reference_seconds = round(secs, 1)
        if rc != 0:
            report.failures.append(f"the reference run failed (exit {rc}); see {work / 'reference.log'}")
            return report
        ref_calls = server.model_calls()
        report.reference_requests = len(ref_calls)
        ref_digests = {body_digest(c.body) for c in ref_calls}
        stage_seconds = {s: float((read_manifest(ref_cache / dataset / s / fp) or {}).get("seconds", 1.0))
                         for s, fp in stages.items()}
        print(f"chaos: reference done in {secs:.0f}s, {len(ref_calls)} LLM requests; stage seconds "
              f"{ {k: round(v, 1) for k, v in stage_seconds.items()} }", flush=True)

        # 2. chaos ----------------------------------------------------------------------------------
        order = list(stages)
        targets = [order[i % len(order)] for i in range(args.kills)]
        targets.sort(key=order.index)
        start_log = len(server.log)
        t_chaos = time.time()
        prefect = work / "chaos" / "prefect"
        log = work / "chaos.log"
        kills_in: dict[str, int] = {}
        n = 0
        pending = list(targets)
        while True:
            target = pending[0] if pending else None
            if target is not None and (stage_dirs[target] / MANIFEST).is_file():
                # the stage finished before a kill could land in it (an earlier kill's stage was short)
                print(f"chaos: {target} already finished; its remaining planned kill(s) move on", flush=True)
                pending.pop(0)
                continue
            n += 1
            attempt = Attempt(n, target)
            before_log, before_rows = len(server.log), cache_rows(got_cache)
            t0 = time.time()
            proc = runner.start(got_cache, prefect, log)
            if target is None:
                try:
                    attempt.returncode = proc.wait(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
                    attempt.returncode = -9
            else:
                # wait for the target stage to run in this attempt, then a seeded part of its reference time
                seen_at = None
                deadline = time.time() + args.timeout
                killed = False
                while time.time() < deadline and proc.poll() is None:
                    running = running_stage(stage_dirs)
                    if seen_at is None and running == target:
                        seen_at = time.time()
                        kills_in[target] = kills_in.get(target, 0) + 1
                        # later kills of a resumed stage aim earlier: less of it is left to do
                        # (at most 0.3 of the reference time: the same stage may run twice as fast this time,
                        # e.g. when the reference shared the CPU with other jobs, and a kill that comes after the
                        # stage finished lands in the next one, or nowhere after the last stage)
                        frac = rng.uniform(0.05, 0.3) / kills_in[target]
                        attempt.delay_s = round(frac * stage_seconds[target], 3)
                    if seen_at is not None and time.time() - seen_at >= attempt.delay_s:
                        attempt.landed = running_stage(stage_dirs)
                        kill_group(proc)
                        killed = True
                        break
                    if seen_at is None and (stage_dirs[target] / MANIFEST).is_file():
                        break  # it finished between two polls: aim at the next target
                    time.sleep(0.02)
                if not killed:
                    if proc.poll() is None:
                        kill_group(proc)
                    attempt.returncode = proc.returncode
                else:
                    attempt.returncode = -9
                    pending.pop(0)
            attempt.seconds = round(time.time() - t0, 1)
            calls = [c for c in server.log[before_log:] if c.path.endswith("/chat/completions")]
            attempt.cut_while_sending = sum(c.outcome == "incomplete_request" for c in calls)
            calls = [c for c in calls if c.outcome != "incomplete_request"]
            attempt.received = len(calls)
            attempt.answered = sum(c.answered_at is not None for c in calls)
            attempt.cached = cache_rows(got_cache) - before_rows
            attempt.lost_in_flight = attempt.received - attempt.cached
            attempt.lost_after_answer = max(0, attempt.answered - attempt.cached)
            attempt.temp_files_after = len(temp_files(got_cache))
            report.attempts.append(attempt)
            print(f"chaos: attempt {n}: aimed at {target}, killed in {attempt.landed} after {attempt.delay_s}s "
                  f"(rc {attempt.returncode}); {attempt.received} LLM requests, {attempt.cached} cached, "
                  f"{attempt.lost_in_flight} cut off in flight, {attempt.temp_files_after} temp files left"
                  if target else f"chaos: final attempt {n}: rc {attempt.returncode} in {attempt.seconds}s, "
                                 f"{attempt.received} LLM requests", flush=True)
            if target is None:
                break
            if attempt.returncode not in (-9, 0) and not killed:
                report.failures.append(f"attempt {n} exited with {attempt.returncode} before any kill; see {log}")
                break
            if n > args.kills * 3 + 5:
                report.failures.append("too many attempts")
                break
        report.chaos_seconds = round(time.time() - t_chaos, 1)
        chaos_calls = server.log[start_log:]
        chaos_calls = [c for c in chaos_calls if c.path.endswith("/chat/completions")
                       and c.outcome != "incomplete_request"]

        # 3. checks ---------------------------------------------------------------------------------
        c = report.checks
        final = report.attempts[-1]
        c["final_run_exit"] = final.returncode
        if final.returncode != 0:
            report.failures.append(f"the final run did not finish (exit {final.returncode}); see {log}")
        landed = sorted({a.landed for a in report.attempts if a.landed}, key=order.index)
        c["kills"] = sum(a.landed is not None for a in report.attempts)
        c["kills_per_stage"] = {s: sum(a.landed == s for a in report.attempts) for s in order}
        missing = [s for s in order if s not in landed]
        if c["kills"] != args.kills:
            report.failures.append(f"{c['kills']} kills landed inside a stage, {args.kills} were asked for")
        if missing:
            report.failures.append(f"no kill landed inside: {missing}")

        # artifacts and metrics
        c["stages"] = compare_stages(ref_cache, got_cache, stages, dataset)
        for stage, entry in c["stages"].items():
            if entry["different"]:
                report.failures.append(f"{stage}: differs from the reference: {entry['different'][:5]}")
        c["metrics_equal"] = metrics(ref_cache, dataset, stages) == metrics(got_cache, dataset, stages)
        if not c["metrics_equal"]:
            report.failures.append("metrics differ from the reference")

        # LLM requests: the same set, and nothing answered-and-cached asked again
        chaos_digests = [body_digest(x.body) for x in chaos_calls]
        resent = len(chaos_digests) - len(set(chaos_digests))
        lost = sum(a.lost_in_flight for a in report.attempts if a.target is not None)
        c["llm"] = {"reference_requests": report.reference_requests, "chaos_requests": len(chaos_digests),
                    "distinct_chaos_requests": len(set(chaos_digests)),
                    "same_requests_as_reference": set(chaos_digests) == ref_digests,
                    "resent": resent, "cut_off_by_a_kill": lost,
                    "cut_off_after_the_server_answered": sum(a.lost_after_answer for a in report.attempts),
                    "cut_off_while_being_sent": sum(a.cut_while_sending for a in report.attempts),
                    "answered_and_cached_then_asked_again": resent - lost,
                    "cache_rows_reference": cache_rows(ref_cache), "cache_rows_chaos": cache_rows(got_cache)}
        if set(chaos_digests) != ref_digests:
            report.failures.append("the chaos run asked different LLM requests than the reference")
        if resent != lost:
            report.failures.append(f"{resent - lost} LLM request(s) answered and cached were asked again")
        if c["llm"]["cache_rows_reference"] != c["llm"]["cache_rows_chaos"]:
            report.failures.append("the LLM cache holds a different number of answers than the reference's")

        # temp files and manifests
        left = temp_files(got_cache)
        c["temp_files_left"] = [str(p) for p in left]
        if left:
            report.failures.append(f"{len(left)} temp file(s) left: {[str(p) for p in left[:5]]}")
        folders = [p for p in (got_cache / dataset).glob("*/*") if p.is_dir()]
        bad = [str(p) for p in folders if (p / MANIFEST).is_file() and not is_complete(p)]
        incomplete = [str(p) for p in folders if not (p / MANIFEST).is_file()]
        c["stage_folders"] = len(folders)
        c["manifests_that_do_not_verify"] = bad
        c["folders_without_manifest"] = incomplete
        if bad:
            report.failures.append(f"manifest(s) that do not verify: {bad}")
        if incomplete:
            report.failures.append(f"folders left without a manifest: {incomplete}")
        dbs = {"reference": ref_cache, "chaos": got_cache}
        for name, cache in dbs.items():
            con = sqlite3.connect(cache / "llm" / "responses.sqlite")
            c[f"llm_cache_integrity_{name}"] = con.execute("PRAGMA integrity_check").fetchone()[0]
            con.close()
            if c[f"llm_cache_integrity_{name}"] != "ok":
                report.failures.append(f"the {name} LLM cache fails its integrity check")
        c["server_responder_errors"] = server.responder_errors[:20]
        if server.responder_errors:
            report.failures.append(f"the LLM server could not answer {len(server.responder_errors)} prompt(s)")
        leaked = [str(p) for p in (work).rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
        c["files_holding_the_api_key"] = leaked
        if leaked:
            report.failures.append(f"the API key was written to {leaked[:5]}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=7, help="SIGKILLs inside stages (round robin over the stages)")
    p.add_argument("--seed", type=int, default=1, help="seeds where the kills land")
    p.add_argument("--scale", choices=sorted(SCALES), default="ci")
    p.add_argument("--workdir", default="/tmp/lagcl-chaos", help="cache, Prefect home and logs of both runs")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one pipeline attempt may take")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    args = p.parse_args(argv)
    t0 = time.time()
    report = chaos(args)
    out = Path(args.workdir).resolve() / "chaos-report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2, default=str))
    print(json.dumps({k: v for k, v in report.checks.items() if k != "stages"}, indent=2, default=str))
    for stage, entry in report.checks.get("stages", {}).items():
        print(f"  {stage:<9} {entry['byte_identical']}/{entry['files']} files byte-identical"
              + (f"; equal in content: {', '.join(entry['equal_content'])}" if entry["equal_content"] else "")
              + (f"; DIFFERENT: {entry['different']}" if entry["different"] else ""))
    print(f"chaos: {'FAILED' if report.failures else 'passed'} in {time.time() - t0:.0f}s "
          f"(reference {report.reference_seconds}s, chaos {report.chaos_seconds}s); report: {out}")
    for f in report.failures:
        print(f"  - {f}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
