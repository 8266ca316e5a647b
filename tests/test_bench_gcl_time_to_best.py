"""scripts/bench_gcl.py --time-to-best: epochs and seconds to the best validation epoch, ours vs the peers'
published defaults, read off each run's per-epoch history."""

from __future__ import annotations

import polars as pl
import pytest

from lagcl.config import GCLConfig
from scripts.bench_gcl import (PEER_DEFAULTS, against_ours, settings_overrides, synthetic_ml1m, time_to_best,
                               time_to_best_row)


def _history(recalls: list[float], seconds: list[tuple[float, float]]) -> pl.DataFrame:
    return pl.DataFrame({"epoch": list(range(1, len(recalls) + 1)), "valid_recall@20": recalls,
                         "valid_ndcg@20": [r / 2 for r in recalls], "train_seconds": [t for t, _ in seconds],
                         "eval_seconds": [e for _, e in seconds]})


def test_seconds_to_best_sum_training_and_validation_up_to_the_best_epoch():
    epochs = _history([0.1, 0.3, 0.2, 0.25], [(1.0, 0.5), (2.0, 0.5), (4.0, 0.5), (8.0, 0.5)])
    row = time_to_best_row(epochs, 2, GCLConfig(epochs=10, patience=2))
    assert row["best_epoch"] == 2 and row["epochs_run"] == 4
    assert row["seconds_to_best"] == pytest.approx(4.0)
    assert row["seconds_total"] == pytest.approx(17.0)
    assert (row["valid_recall@20"], row["valid_ndcg@20"]) == (0.3, 0.15)
    assert not row["cap_hit"]


def test_a_run_that_ends_at_the_cap_while_still_improving_is_marked_as_a_lower_bound():
    epochs = _history([0.1, 0.2, 0.3], [(1.0, 0.0)] * 3)
    assert time_to_best_row(epochs, 3, GCLConfig(epochs=3, patience=2))["cap_hit"]
    # at the cap, but patience had run out there too: early stopping ended it, the best is known
    epochs = _history([0.3, 0.2, 0.1], [(1.0, 0.0)] * 3)
    assert not time_to_best_row(epochs, 1, GCLConfig(epochs=3, patience=2))["cap_hit"]
    # patience ran out but min_epochs kept it going to the cap: a later best was still possible
    assert time_to_best_row(epochs, 1, GCLConfig(epochs=3, patience=2, min_epochs=5))["cap_hit"]


def test_the_peers_settings_are_their_published_defaults_and_absent_models_stay_empty():
    assert settings_overrides("lightgcn", "ours") == []
    assert settings_overrides("xsimgcl", "recbole") is None and settings_overrides("lightgcl", "selfrec") is None
    assert "gcl.lr=0.001" in settings_overrides("sgl", "recbole")
    assert PEER_DEFAULTS["selfrec"]["xsimgcl"]["cl_temperature"] == 0.15


def test_each_run_reports_its_best_epoch_and_seconds_as_its_history_shows():
    inter, n_users, n_items = synthetic_ml1m(seed=3, n_users=60, n_items=50, n_edges=900)
    cap = 6
    lines: list[str] = []
    rows = time_to_best(["lightgcn", "xsimgcl"], ["ours", "recbole", "selfrec"], cap, inter, n_users, n_items,
                        overrides=["gcl.patience=2", "gcl.min_epochs=0"], log=lines.append)
    assert [(r["backbone"], r["settings"]) for r in rows if r["missing"]] == [("xsimgcl", "recbole")]
    ran = [r for r in rows if not r["missing"]]
    assert len(ran) == 5
    for r in ran:
        h = r["history"]
        recalls = [e["valid_recall@20"] for e in h]
        assert r["epochs_run"] == len(h) <= cap
        assert r["best_epoch"] == recalls.index(max(recalls)) + 1  # the first epoch reaching the maximum
        best = h[r["best_epoch"] - 1]
        assert r["valid_recall@20"] == best["valid_recall@20"] and r["valid_ndcg@20"] == best["valid_ndcg@20"]
        per_epoch = [e["train_seconds"] + e["eval_seconds"] for e in h]
        assert r["seconds_to_best"] == pytest.approx(sum(per_epoch[:r["best_epoch"]]))
        assert r["seconds_total"] == pytest.approx(sum(per_epoch))
        stopped_early = len(h) - r["best_epoch"] >= 2
        assert r["cap_hit"] == (len(h) == cap and not stopped_early)
        assert len(h) == cap or stopped_early  # it ran until the cap or until patience ran out
        assert 0.0 <= r["test_recall@20"] <= 1.0
    by = {(r["backbone"], r["settings"]): r for r in ran}
    ours, peer = by[("lightgcn", "ours")], by[("lightgcn", "selfrec")]
    assert peer["epochs_vs_ours"] == pytest.approx(peer["best_epoch"] / ours["best_epoch"])
    assert peer["seconds_vs_ours"] == pytest.approx(peer["seconds_to_best"] / ours["seconds_to_best"])
    # one printed line per row, as it finishes; a peer's line carries its multiples of our run
    assert len(lines) == len(rows) and "| xsimgcl | recbole: no such model |" in lines[4]
    printed = [float(x.rstrip("x")) for x in lines[2].split(" | ")[5].split(", ")]
    assert printed == pytest.approx([peer["epochs_vs_ours"], peer["seconds_vs_ours"]], abs=0.05)
    described = {(r["backbone"], r["settings"]): r["described"] for r in ran}
    assert described[("lightgcn", "selfrec")].startswith("lr 0.001, batch 2048, d 64, L 2, reg 0.0001")
    assert described[("lightgcn", "ours")].startswith("lr 0.005")


def test_a_peer_run_is_compared_with_our_run_of_the_same_backbone():
    ours = {"backbone": "sgl", "settings": "ours", "missing": False, "best_epoch": 20, "seconds_to_best": 10.0}
    other = {"backbone": "mf", "settings": "ours", "missing": False, "best_epoch": 5, "seconds_to_best": 1.0}
    peer = {"backbone": "sgl", "settings": "recbole", "missing": False, "best_epoch": 90, "seconds_to_best": 55.0}
    row = against_ours(peer, [other, ours])
    assert (row["epochs_vs_ours"], row["seconds_vs_ours"]) == (4.5, 5.5)
    assert against_ours(peer, [other])["epochs_vs_ours"] is None
