"""What ~3% new ratings change on ML-100K before any LLM call (issue 14, "pay only for what changed").

Appends `--new` ratings (random users, items they have not rated, seeded) to a copy of the raw file, prepares
both versions and counts what the LLM stages' prompts are made of that changed: users whose training set
changed (with and without a new rating of their own), internal user and item ids that moved, users who became
or stopped being cold-start; the user and item profile requests (eq. 1, what the profiles stage sends) that
changed under each `profiles.item_rating_counts`; and how long the raw-file digest takes hashed and from its index.

    PYTHONPATH=$PWD .venv/bin/python -m scripts.rerun_churn [--new 3000] [--out /tmp/rerun-churn]
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from lagcl.augment import cold_users
from lagcl.config import load_config
from lagcl.data.digest import raw_inputs
from lagcl.data.fetch import ensure_ml100k
from lagcl.data.prepare import prepare
from lagcl.data.readers import read_raw
from lagcl.profiles import profile_requests

REPO = Path(__file__).resolve().parent.parent


def append_ratings(inter: Path, n: int, seed: int = 0, users: int | None = None) -> list[str]:
    """Append n ratings (random existing users, items they have not rated, ratings 1-5) to an ML-100K
    atomic .inter file; returns the lines added. `users`: the ratings come from that many random users only
    (a night's active users) instead of from users drawn row by row (which touches most users)."""
    lines = inter.read_text().splitlines()
    rows = [ln.split("\t") for ln in lines[1:]]
    seen = {(r[0], r[1]) for r in rows}
    items = sorted({r[1] for r in rows})
    rng = np.random.default_rng(seed)
    active = sorted({r[0] for r in rows})
    if users is not None:
        active = [active[i] for i in rng.choice(len(active), size=users, replace=False)]
    new: list[str] = []
    while len(new) < n:
        user = rows[rng.integers(len(rows))][0] if users is None else active[rng.integers(len(active))]
        item = items[rng.integers(len(items))]
        if (user, item) not in seen:
            seen.add((user, item))
            new.append(f"{user}\t{item}\t{rng.integers(1, 6)}\t893286638")
    inter.write_text("\n".join(lines + new) + "\n")
    return new


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=3000)
    ap.add_argument("--users", type=int, default=None, help="new ratings from this many users only")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rerun-churn"))
    args = ap.parse_args()
    src = ensure_ml100k(REPO / "cache" / "raw" / "ml-100k")
    before, after = args.out / "before", args.out / "after"
    for d in (before, after):
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
    new = append_ratings(after / "ml-100k.inter", args.new, users=args.users)
    rows = (before / "ml-100k.inter").read_text().splitlines()[1:]

    cfg = load_config(overrides=[f"data.path={before}"])
    t = time.perf_counter()
    raw_inputs(cfg.data, before, args.out / "cache")
    miss = time.perf_counter() - t
    t = time.perf_counter()
    raw_inputs(cfg.data, before, args.out / "cache")
    hit = time.perf_counter() - t
    print(f"digest of ML-100K's 3 raw files: {miss * 1000:.1f} ms hashed, {hit * 1000:.1f} ms from the index")

    prepared = {}
    for name, d in (("before", before), ("after", after)):
        c = load_config(overrides=[f"data.path={d}"])
        prepared[name] = prepare(read_raw(c.data, REPO), c.data, c.seed)

    def train_sets(p) -> dict[str, frozenset]:
        it = p.interactions.join(p.users.select("user", u="raw_id"), on="user").join(
            p.items.select("item", i="raw_id"), on="item")
        return {u: frozenset(g) for u, g in it.filter((pl.col("split") == "train") & (pl.col("sign") > 0))
                .group_by("u").agg("i").iter_rows()}

    pb, pa = prepared["before"], prepared["after"]
    tb, ta = train_sets(pb), train_sets(pa)
    touched = {ln.split("\t")[0] for ln in new}
    changed = {u for u in ta if tb.get(u) != ta[u]}
    print(f"{len(new)} ratings appended ({len(new) / len(rows):.1%}) by {len(touched)} users")
    print(f"users whose training positives changed: {len(changed)}/{len(ta)} "
          f"({len(changed - touched)} of them without a new rating)")
    for kind in ("users", "items"):
        key = kind[:-1]
        b, a = (dict(zip(p[kind]["raw_id"], p[kind][key])) for p in (pb.__dict__, pa.__dict__))
        print(f"{kind} whose internal id moved: {sum(a.get(k) != v for k, v in b.items())}/{len(b)} "
              f"({len(set(a) - set(b))} new)")
    for mode in ("exact", "coarse", "off"):
        asked = [{(r.kind, r.label): replace(r, id=0) for r in profile_requests(
            p.interactions, p.users, p.items, item_rating_counts=mode)} for p in (pb, pa)]
        for kind in ("user", "item"):
            old = {k: v for k, v in asked[0].items() if k[0] == kind}
            new = {k: v for k, v in asked[1].items() if k[0] == kind}
            print(f"{kind} profile requests changed, item_rating_counts={mode}: "
                  f"{sum(old.get(k) != v for k, v in new.items())}/{len(new)} ({len(set(new) - set(old))} new)")
    cold = [set(p.users.filter(pl.col("user").is_in(cold_users(p.interactions, 30)))["raw_id"]) for p in (pb, pa)]
    print(f"cold-start users: {len(cold[0])} before, {len(cold[1])} after ({len(cold[1] - cold[0])} became cold, "
          f"{len(cold[0] - cold[1])} stopped)")


if __name__ == "__main__":
    main()
