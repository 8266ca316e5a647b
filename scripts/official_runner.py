"""Run the paper authors' released XSimGCL (../shared/anchors/lagcl4rec-official) on CPU, in this process, with
the smallest changes that let it run here, applied at run time (their files are read, never edited or copied):

- device: `torch.Tensor.cuda` and `torch.nn.Module.cuda` return the object itself (their code is CUDA only);
- imports: `llm_reranker` (the Qwen reranker: their ReadME's step 2 turns reranking off for the CF model; here
  its constructor raises, which their code catches, so no reranking runs), `logger` (SELFRec's log writer, not
  in their snapshot) and `numba` (not installed; `find_k_largest` is only reached for dict scores, never here)
  are stand-in modules;
- `conf.OptionConf` also reads "-key value" option strings (their conf.py reads only files, while recommender.py
  and XSimGCL.py hand it `-topN 10,20`, `-dir ./results/` and the XSimGCL options, as SELFRec's OptionConf does);
- `XSimGCL.load_group_info` reads our exported group files instead of the hard-coded /home/zlq/... paths;
  `--groups intended` also keys the dicts by id *strings*, as their loader keys users and items (`--groups
  released` keeps their int keys);
- `GraphRecommender._generate_cf_candidates` (writes cf_candidates.json to a hard-coded /home/zlq/... path at
  epoch 20, for the reranker) does nothing;
- the entry point: main.py cannot run as released (`from imp import reload` fails on their Python 3.12, its conf
  path is hard-coded, and its `load_data` splits lines on commas while their documented files are
  tab-separated), so this runner loads the train/test files with their `FileIO.load_train_set` /
  `load_test_set` (tabs, weight 1 / -1), trains on the positives it returns, and calls `train()` (their
  `execute()` calls `self.config.contain`, which their OptionConf lacks, and ends in an `evaluate()` that looks
  up every test user while their `test()` ranked a 20% sample of them).

Instrumentation (no effect on what trains; its seconds are taken out of the epoch times): per epoch, how many of
the batch users / positives found their key in the loaded group dicts, how many hard / easy negatives lie in the
positive's group (the groups as exported, looked up by id string), and how many group-aware InfoNCE calls saw a
batch of one group (plain InfoNCE). After every epoch the user and item embeddings that their `fast_evaluation`
scores are saved, with their own Recall/NDCG@20 of that epoch (20% of the test users, training items masked) and
their running best (chosen on that test sample).

    python scripts/official_runner.py --official DIR --conf XSimGCL.conf --groups released|intended \
        --user-groups user_group.txt --item-groups item_group.txt --seed 2024 --out result.json

Run it from an empty temporary folder: their code writes ./results/ there. scripts/bench_official.py drives it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import types
from pathlib import Path


def option_string(text: str) -> dict[str, str]:
    """'-n_layer 2 -l* 1 -topN 10,20' -> {'-n_layer': '2', '-l*': '1', '-topN': '10,20'}: a key is a token that
    starts with '-' and is not a number; its value is the tokens up to the next key, joined by spaces."""
    out: dict[str, str] = {}
    key = None
    for tok in text.split():
        if tok.startswith("-") and not _is_number(tok):
            key = tok
            out[key] = ""
        elif key is not None:
            out[key] = f"{out[key]} {tok}".strip()
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_group_file(path: str) -> dict[str, int]:
    """Our exported `id,group` file, keyed by the id string (what the instrumentation compares against)."""
    out = {}
    with open(path) as fh:
        for line in fh:
            a, b = line.strip().split(",")
            out[a] = int(b)
    return out


def stub_modules() -> None:
    reranker = types.ModuleType("llm_reranker")

    class LLMReranker:  # their GraphRecommender catches this and runs without reranking
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the LLM reranker is not part of this benchmark (CF model only)")

    reranker.LLMReranker = LLMReranker
    logger = types.ModuleType("logger")

    class Log:
        def __init__(self, *args, **kwargs):
            pass

        def add(self, *args, **kwargs):
            pass

    logger.Log = Log
    numba = types.ModuleType("numba")

    def jit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn

    numba.jit = jit
    for name, mod in (("llm_reranker", reranker), ("logger", logger), ("numba", numba)):
        sys.modules.setdefault(name, mod)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="the folder of their code")
    p.add_argument("--conf", required=True, help="their XSimGCL.conf with our paths")
    p.add_argument("--groups", choices=["released", "intended"], required=True)
    p.add_argument("--user-groups", required=True)
    p.add_argument("--item-groups", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="result JSON; the embeddings go beside it (.npz)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    sys.path.insert(0, str(Path(args.official).resolve()))
    stub_modules()
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self

    import conf as their_conf

    orig_init = their_conf.OptionConf.__init__

    def option_conf_init(self, config_file=None, config=None):
        if config_file and not os.path.exists(config_file):
            self.config = option_string(config_file)
            return
        orig_init(self, config_file, config)

    their_conf.OptionConf.__init__ = option_conf_init

    import XSimGCL as their_model
    import recommender as their_rec
    from loader import FileIO

    files = {"user_group.txt": args.user_groups, "item_group.txt": args.item_groups}
    orig_load = their_model.XSimGCL.load_group_info

    def load_group_info(self, filepath):
        groups = orig_load(self, files[os.path.basename(filepath)])
        if args.groups == "intended" and groups is not None:
            groups = {str(k): v for k, v in groups.items()}
        return groups

    their_model.XSimGCL.load_group_info = load_group_info
    their_rec.GraphRecommender._generate_cf_candidates = lambda self, raw_scores: None

    user_truth, item_truth = read_group_file(args.user_groups), read_group_file(args.item_groups)
    counts = {k: 0 for k in ("triplets", "user_key_found", "pos_key_found", "hard_in_pos_group",
                             "easy_in_pos_group", "cl_calls", "cl_one_group")}
    per_epoch_counts: list[dict] = []
    clock = {"last": 0.0, "instrument": 0.0}
    epochs: list[dict] = []
    user_embs, item_embs = [], []

    orig_batches = their_model.next_batch_pairwise_with_groups

    def batches(data, batch_size, user_groups, item_groups, *a, **k):
        for batch in orig_batches(data, batch_size, user_groups, item_groups, *a, **k):
            t0 = time.perf_counter()
            u_idx, i_idx, easy, hard = batch[:4]
            for u, i, e, h in zip(u_idx, i_idx, easy, hard):
                user, item = data.id2user[u], data.id2item[i]
                g = item_truth.get(item)
                counts["triplets"] += 1
                counts["user_key_found"] += user in user_groups
                counts["pos_key_found"] += item in item_groups
                counts["hard_in_pos_group"] += item_truth.get(data.id2item[h]) == g
                counts["easy_in_pos_group"] += item_truth.get(data.id2item[e]) == g
            clock["instrument"] += time.perf_counter() - t0
            yield batch

    their_model.next_batch_pairwise_with_groups = batches
    orig_nce = their_model.XSimGCL.group_aware_InfoNCE

    def group_aware_nce(self, view1, view2, temp_pos, temp_easy, temp_hard, group_ids):
        counts["cl_calls"] += 1
        counts["cl_one_group"] += int(torch.unique(group_ids).numel() == 1)
        return orig_nce(self, view1, view2, temp_pos, temp_easy, temp_hard, group_ids)

    their_model.XSimGCL.group_aware_InfoNCE = group_aware_nce
    orig_eval = their_rec.GraphRecommender.fast_evaluation

    def fast_evaluation(self, epoch):
        now = time.perf_counter()
        train_s = now - clock["last"] - clock["instrument"]
        user_embs.append(self.user_emb.detach().cpu().numpy().astype(np.float32))
        item_embs.append(self.item_emb.detach().cpu().numpy().astype(np.float32))
        measure = orig_eval(self, epoch)
        own = dict(m.split(":") for m in measure)
        epochs.append({"epoch": epoch + 1, "train_seconds": train_s, "eval_seconds": time.perf_counter() - now,
                       "own_recall@20": float(own["Recall"]), "own_ndcg@20": float(own["NDCG"])})
        per_epoch_counts.append(dict(counts))
        for key in counts:
            counts[key] = 0
        clock["instrument"] = 0.0
        clock["last"] = time.perf_counter()
        return measure

    their_rec.GraphRecommender.fast_evaluation = fast_evaluation

    conf = their_conf.OptionConf(args.conf)
    train_pos, _, _ = FileIO.load_train_set(conf["training.set"], None)
    test = FileIO.load_test_set(conf["test.set"], None)
    t0 = time.perf_counter()
    model = their_model.XSimGCL(conf, train_pos, test)
    setup_s = time.perf_counter() - t0
    clock["last"] = time.perf_counter()
    model.train()
    out = Path(args.out)
    np.savez(out.with_suffix(".npz"), user=np.stack(user_embs), item=np.stack(item_embs))
    best = model.bestPerformance
    out.write_text(json.dumps({
        "groups": args.groups, "seed": args.seed, "setup_seconds": setup_s,
        "user_ids": [model.data.id2user[k] for k in range(model.data.user_num)],
        "item_ids": [model.data.id2item[k] for k in range(model.data.item_num)],
        "user_groups_loaded": len(model.user_groups), "item_groups_loaded": len(model.item_groups),
        "group_key_type": type(next(iter(model.item_groups))).__name__,
        "epochs": epochs, "counts": per_epoch_counts,
        "own_best": {"epoch": best[0], "recall@20": best[1]["Recall"], "ndcg@20": best[1]["NDCG"]},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
