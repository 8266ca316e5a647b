"""Synthetic datasets at the paper's Table-1 shapes, for timing the pipeline at those sizes.

    .venv/bin/python -m scripts.synthetic_data ml-1m            # -> data/synthetic-ml-1m/
    make pipeline DATA=synthetic OVERRIDES="data.path=data/synthetic-ml-1m"

Each dataset has the shape's users, items and interactions; signed ratings 1-5 (rating > 3 is a like);
item text (a title, 1-3 of 18 categories, a one-sentence description) and user attributes, written as
Parquet files that the generic `table` reader reads (conf/data/synthetic.yaml). Users have a favourite
category and like its items more often; item popularity is Zipf-like and user activity log-normal, so
the degree distributions look like a rating site's. Numbers are seeded: the same shape gives the same
files. Only the sizes and the text lengths mean anything: the preferences are random, not real.

Table 1 counts what is left after the k-core (docs/design.md 2), so the generator first lays a scaffold of
likes that gives every user and every item `core` (the data's kcore, 5) liked interactions, then draws the
rest: `prepare` then keeps the whole shape. Without it the sparse shapes lost half their users to the
5-core (Steam 23,310 -> 12,241 users, Amazon-book 11,000 -> 3,220).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

# Table 1 of the paper: users, items, interactions
SHAPES = {"ml-1m": (6040, 3952, 1_000_209), "amazon-book": (11_000, 9_332, 120_000),
          "yelp": (11_091, 11_010, 167_000), "steam": (23_310, 5_237, 316_000)}
CATEGORIES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western"]
WORDS = ["night", "river", "city", "storm", "garden", "signal", "winter", "shadow", "harbor", "engine", "letter",
         "island", "mirror", "forest", "voice", "bridge", "summer", "circle", "empire", "station"]
OCCUPATIONS = ["writer", "engineer", "student", "artist", "doctor", "lawyer", "retired", "other"]


def scaffold(n_users: int, n_items: int, core: int, rng: np.random.Generator) -> np.ndarray:
    """Keys (user * n_items + item) of max(users, items) * core distinct pairs in which every user and every
    item appears at least `core` times: user slots and item slots dealt round-robin, then paired at random;
    a pair drawn twice swaps its item with a random slot until all pairs are distinct."""
    size = max(n_users, n_items) * core
    users = np.resize(rng.permutation(n_users), size)
    items = np.resize(rng.permutation(n_items), size)[rng.permutation(size)]
    for _ in range(100):
        key = users.astype(np.int64) * n_items + items
        _, first = np.unique(key, return_index=True)
        again = np.setdiff1d(np.arange(size), first)
        if not again.size:
            return key
        other = rng.integers(size, size=again.size)
        items[again], items[other] = items[other], items[again]
    raise ValueError(f"cannot give {n_users} users and {n_items} items {core} distinct likes each")


def generate(n_users: int, n_items: int, n_inter: int, seed: int = 0, core: int = 5) -> dict[str, pl.DataFrame]:
    """{'ratings', 'items', 'users'} tables of one synthetic dataset (ids are strings, as raw files have), in
    which every user and every item has at least `core` likes (so a `core`-core keeps all of it)."""
    if min(n_users, n_items) < 1 or n_inter > n_users * n_items // 2:
        raise ValueError(f"cannot place {n_inter} interactions among {n_users} users x {n_items} items "
                         "(at most half the matrix)")
    if core and max(n_users, n_items) * core > n_inter:
        raise ValueError(f"{n_inter} interactions cannot give {n_users} users and {n_items} items {core} likes "
                         f"each (that needs {max(n_users, n_items) * core}): lower `core` or add interactions")
    rng = np.random.default_rng(seed)
    n_cat = len(CATEGORIES)
    first_cat = rng.integers(n_cat, size=n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    base = scaffold(n_users, n_items, core, rng) if core else np.zeros(0, dtype=np.int64)
    n_rest = n_inter - base.size
    # user activity beyond the scaffold: log-normal, scaled to the interactions left
    act = rng.lognormal(0.0, 1.0, size=n_users)
    act = np.round(act / act.sum() * n_rest).astype(np.int64)
    act = np.minimum(act, n_items // 2)
    fav = rng.integers(n_cat, size=n_users)
    by_cat = [np.flatnonzero(first_cat == c) for c in range(n_cat)]
    cat_p = [popularity[ix] / popularity[ix].sum() if ix.size else None for ix in by_cat]
    glob_p = popularity / popularity.sum()
    # draw with spare, drop repeated (user, item) pairs, cut to the target count (more spare while short)
    spare = 1.1
    for _ in range(8):
        users = np.repeat(np.arange(n_users), np.ceil(act * spare).astype(np.int64))
        from_fav = rng.random(users.size) < 0.4
        items = rng.choice(n_items, size=users.size, p=glob_p)
        for c in range(n_cat):
            sel = from_fav & (fav[users] == c)
            if sel.any() and by_cat[c].size:
                items[sel] = rng.choice(by_cat[c], size=int(sel.sum()), p=cat_p[c])
        key = np.setdiff1d(np.unique(users.astype(np.int64) * n_items + items), base)
        if key.size >= n_rest:
            break
        spare *= 1.5
    rest = rng.permutation(key)[:n_rest]
    key = np.concatenate([base, rest])
    in_base = np.concatenate([np.ones(base.size, bool), np.zeros(rest.size, bool)])
    order = np.argsort(key)
    key, in_base = key[order], in_base[order]
    u, i = key // n_items, key % n_items
    liked = first_cat[i] == fav[u]
    rating = np.clip(np.round(rng.normal(np.where(liked, 4.2, 3.2), 1.0)), 1, 5).astype(np.int64)
    rating[in_base] = rng.integers(4, 6, size=int(in_base.sum()))  # the scaffold's likes (rating > 3)
    ts = 880_000_000 + rng.integers(0, 100_000_000, size=u.size)
    extra = [rng.choice(n_cat, size=rng.integers(0, 3), replace=False).tolist() for _ in range(n_items)]
    cats = ["|".join(dict.fromkeys([CATEGORIES[first_cat[k]]] + [CATEGORIES[c] for c in extra[k]]))
            for k in range(n_items)]
    w = rng.integers(len(WORDS), size=(n_items, 3))
    titles = [f"The {WORDS[a].capitalize()} of the {WORDS[b].capitalize()} {k}" for k, (a, b, _) in enumerate(w)]
    descr = [f"A {cats[k].split('|')[0].lower()} story of a {WORDS[c]} and a {WORDS[a]}, told over "
             f"{1 + k % 9} chapters." for k, (a, b, c) in enumerate(w)]
    return {
        "ratings": pl.DataFrame({"user_id": [f"u{x}" for x in u], "item_id": [f"i{x}" for x in i],
                                 "rating": rating, "timestamp": ts}),
        "items": pl.DataFrame({"item_id": [f"i{k}" for k in range(n_items)], "title": titles, "genres": cats,
                               "description": descr}),
        "users": pl.DataFrame({"user_id": [f"u{k}" for k in range(n_users)],
                               "age": rng.integers(18, 70, size=n_users).astype(str).tolist(),
                               "gender": rng.choice(["F", "M"], size=n_users).tolist(),
                               "occupation": rng.choice(OCCUPATIONS, size=n_users).tolist()}),
    }


def write(shape: str, out: Path, seed: int = 0, scale: float = 1.0, core: int = 5) -> Path:
    """The shape's three tables as Parquet in `out` (conf/data/synthetic.yaml names them). A scale small
    enough that the interactions cannot give every item `core` likes gets the largest scaffold that fits
    (the k-core then trims it, as it did every shape before the scaffold)."""
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape '{shape}': choose one of {', '.join(SHAPES)}")
    n_u, n_i, n_x = SHAPES[shape]
    # a scale keeps the items and the density: users and interactions shrink together
    n_u, n_x = max(1, int(round(n_u * scale))), max(1, int(round(n_x * scale)))
    core = min(core, n_x // max(n_u, n_i))
    out.mkdir(parents=True, exist_ok=True)
    for name, df in generate(n_u, n_i, n_x, seed, core).items():
        df.write_parquet(out / f"{name}.parquet")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("--out", type=Path, help="folder (default data/synthetic-<shape>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="users and interactions times this (items and density kept)")
    a = ap.parse_args(argv)
    out = write(a.shape, a.out or Path("data") / f"synthetic-{a.shape}", a.seed, a.scale)
    print(f"{a.shape}: {out} (read with: --data synthetic --set data.path={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
