"""scripts/bench_pipeline.py: growth exponents and full-run projections from per-stage measurements."""

from __future__ import annotations

import pytest

from scripts.bench_pipeline import STAGE_ORDER, exponent, growth, parse_shape, project


def _run(name: str, scale: float, users: int, seconds: dict[str, float], per_epoch: float = 1.0,
         per_user: int = 100) -> dict:
    sizes = {"users": users, "items": 1000, "interactions": per_user * users, "positives": per_user * users // 2,
             "train_positives": per_user * users * 35 // 100, "cold_users": users // 4, "n_candidates": 2048,
             "epochs_control": 2, "epochs_gcl": 2}
    return {"shape": f"{name}@{scale:g}", "name": name, "scale": scale, "sizes": sizes,
            "per_epoch_control": {"train_seconds": per_epoch, "eval_seconds": 0.0, "variants": 1},
            "per_epoch_gcl": {"train_seconds": per_epoch, "eval_seconds": 0.0, "variants": 1},
            "stages": [{"stage": s, "seconds": seconds.get(s, 1.0), "peak_rss_mib": 500.0} for s in STAGE_ORDER]}


def test_a_shape_reads_as_name_and_scale():
    assert parse_shape("ml-1m") == ("ml-1m", 1.0)
    assert parse_shape("steam@0.25") == ("steam", 0.25)


def test_the_exponent_is_the_log_ratio_of_seconds_over_the_log_ratio_of_work():
    assert exponent(1.0, 4.0, 10, 40) == pytest.approx(1.0)
    assert exponent(1.0, 16.0, 10, 40) == pytest.approx(2.0)
    assert exponent(1.0, 2.0, 10, 10) is None


def test_a_stage_whose_seconds_grow_as_the_square_of_its_work_is_flagged():
    small = _run("ml-1m", 0.25, 1000, {"augment": 10.0, "groups": 10.0})
    large = _run("ml-1m", 1.0, 4000, {"augment": 40.0, "groups": 62.5})  # users + items: 2,000 -> 5,000
    rows = {r["stage"]: r for r in growth([small, large])}
    assert rows["augment"]["exponent"] == pytest.approx(1.0) and not rows["augment"]["faster_than_work"]
    assert rows["groups"]["exponent"] == pytest.approx(2.0) and rows["groups"]["faster_than_work"]


def test_one_gcl_epoch_has_its_own_exponent_against_the_training_positives():
    small = _run("ml-1m", 0.25, 1000, {}, per_epoch=1.0)
    large = _run("ml-1m", 1.0, 4000, {}, per_epoch=16.0)
    rows = {r["stage"]: r for r in growth([small, large])}
    assert rows["gcl epoch"]["exponent"] == pytest.approx(2.0)


def test_a_full_run_is_projected_with_the_full_epochs_of_every_trained_variant():
    run = _run("ml-1m", 1.0, 6040, {"gcl": 2 * 3.0 + 5.0}, per_epoch=3.0)  # 2 epochs of 3 s + 5 s fixed
    [ml1m] = [p for p in project([run], {"control": 110, "gcl": 100}) if p["shape"] == "ml-1m"]
    ratio = 1_000_209 / run["sizes"]["interactions"]  # Table 1's interactions over the measured run's
    assert ml1m["stages"]["gcl"] == pytest.approx(5.0 * ratio + 3.0 * ratio * 100, rel=1e-3)
    assert ml1m["stages"]["evaluate"] == pytest.approx(1.0 * 6040 * 3952 / (6040 * 1000), abs=0.06)
    assert ml1m["total_s"] == pytest.approx(sum(ml1m["stages"].values()), abs=0.5)


def test_a_shape_not_measured_is_scaled_from_the_nearest_measured_run():
    ml = _run("ml-1m", 1.0, 6040, {})
    steam = _run("steam", 0.25, 5000, {}, per_user=15)  # sparse, as Yelp is
    refs = {p["shape"]: set(p["references"].values()) for p in project([ml, steam], {"control": 1, "gcl": 1})}
    assert refs["steam"] == {"steam@0.25"}
    assert refs["yelp"] == {"steam@0.25"}
