"""`make compare` (flows/summary.py): one row per configuration, its latest finished run, in a fixed order
(backbone, engine, levels tried, settings), with every step of the chain shown, turned-down ones included."""

from __future__ import annotations

import json

from flows.summary import comparison_rows, format_comparison, levels_order
from lagcl.artifacts import ArtifactStore


def finished(store: ArtifactStore, stage: str, fp: str, meta: dict) -> str:
    with store.stage(stage, fp) as sd:
        sd.finish(meta)
    return str(store.stage_path(stage, fp))


def chain(control: float, rank: float | None, rank_kept: bool, p: float | None = None) -> list[dict]:
    rows = [{"level": "control", "variant": "control", "trained": True, "kept": True, "test_recall@20": control},
            {"level": "data", "variant": "off", "trained": False, "kept": False, "test_recall@20": None}]
    if rank is not None:
        rows.append({"level": "rank", "variant": "rank", "trained": True, "kept": rank_kept, "test_recall@20": rank,
                     "test_recall@20_p": p})
    return rows


def meta(backbone: str, recall: float, control: float, levels: list[dict]) -> dict:
    return {"backbone": backbone, "test_recall@20": recall, "test_ndcg@20": recall / 2,
            "control_test_recall@20": control, "control_test_ndcg@20": control / 2, "levels": levels}


def record(store: ArtifactStore, **entry) -> None:
    path = store.root / store.dataset / "runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def test_compare_shows_one_row_per_configuration_in_a_fixed_order_with_turned_down_steps(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    old = finished(store, "gcl", "a1", meta("lightgcn", 0.30, 0.30, chain(0.30, 0.28, False)))
    new = finished(store, "gcl", "a2", meta("lightgcn", 0.35, 0.35, chain(0.35, 0.3325, False, p=0.004)))
    xsim = finished(store, "gcl", "b1", meta("xsimgcl", 0.44, 0.40, chain(0.40, 0.44, True, p=0.001)))
    ctrl = finished(store, "control", "c1", meta("lightgcn", 0.36, 0.36, []))
    both = ["data", "rank"]
    # written out of order: xsimgcl first, the lightgcn configuration twice (older then newer), a control-only one
    record(store, configuration="B", backbone="xsimgcl", engine="embedding", levels=["rank"], settings=[],
           finished_at="t1", folders={"gcl": xsim})
    record(store, configuration="A", backbone="lightgcn", engine="embedding", levels=both, settings=[],
           finished_at="t2", folders={"gcl": old})
    record(store, configuration="A", backbone="lightgcn", engine="embedding", levels=both, settings=[],
           finished_at="t3", folders={"gcl": new})
    record(store, configuration="C", label="lightgcn, engine embedding, levels none", finished_at="t4",
           folders={"control": ctrl})  # an entry from before runs recorded their levels: read from its label
    rows = comparison_rows(store)
    assert [(r["backbone"], r["levels"]) for r in rows] == [("lightgcn", "none"), ("lightgcn", "data+rank"),
                                                           ("xsimgcl", "rank")]
    a = rows[1]
    assert (a["runs"], a["recall@20"], a["finished_at"]) == (2, 0.35, "t3")  # the latest of the two runs
    assert (a["data"], a["rank"], a["rerank"]) == ("not trained", "turned down -5.0%**", "-")
    assert rows[2]["rank"] == "kept +10.0%**"
    assert rows[0]["data"] == rows[0]["rank"] == "-"
    lines = format_comparison(rows, "toy").splitlines()
    assert len(lines) == 2 + 3 and "turned down -5.0%**" in lines[3] and "not trained" in lines[3]


def test_a_configuration_whose_latest_folder_is_gone_shows_its_previous_finished_run(tmp_path):
    store = ArtifactStore(tmp_path, "toy")
    old = finished(store, "gcl", "a1", meta("lightgcn", 0.30, 0.30, chain(0.30, None, False)))
    for when, folder in (("t1", old), ("t2", str(tmp_path / "toy" / "gcl" / "deleted"))):
        record(store, configuration="A", backbone="lightgcn", engine="embedding", levels=["data"], settings=[],
               finished_at=when, folders={"gcl": folder})
    (row,) = comparison_rows(store)
    assert (row["finished_at"], row["runs"], row["data"]) == ("t1", 2, "not trained")


def test_levels_are_ordered_fewest_first_then_in_the_chains_order():
    names = [[], ["data"], ["rank"], ["rerank"], ["data", "rank"], ["data", "rerank"], ["rank", "rerank"],
             ["data", "rank", "rerank"]]
    assert sorted(reversed(names), key=levels_order) == names


def test_compare_without_a_recorded_run_says_so(tmp_path):
    assert "none recorded yet" in format_comparison(comparison_rows(ArtifactStore(tmp_path, "toy")), "toy")
