"""A run's summary says what changed since the previous finished run of the dataset (issue 14): interactions
added and removed, users and items added, stages recomputed vs reused, LLM requests sent vs cached."""

from __future__ import annotations


from flows.history import previous_run, record_run, what_changed
from tasks import prepare as prepare_stage
from tasks.base import make_plan

from test_digest import config, write_ratings


def test_appended_ratings_show_as_added_interactions_and_a_recomputed_prepare(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    first = make_plan(config(tmp_path, raw))
    assert previous_run(first) is None
    done = {"prepare": prepare_stage.run(first).path}
    assert what_changed(first, done, None)[0].startswith("what changed: first finished run of my-csv with this configuration")
    record_run(first, done)

    # the same data again: everything reused
    again = make_plan(config(tmp_path, raw))
    same = what_changed(again, {"prepare": prepare_stage.run(again).path}, previous_run(again))
    assert "recomputed nothing; reused (Cached) prepare" in same[0]

    # a new user with five liked items and one changed rating
    lines = (raw / "ratings.csv").read_text().splitlines()
    user, item, rating, ts = lines[1].split(",")
    lines[1] = f"{user},{item},{1 if int(rating) > 1 else 2},{ts}"
    lines += [f"newcomer,i{i},5,1700000000" for i in range(5)]
    (raw / "ratings.csv").write_text("\n".join(lines) + "\n")
    plan = make_plan(config(tmp_path, raw))
    profiles = plan.store.stage("profiles", plan.fingerprints["profiles"])
    with profiles as sd:  # an LLM stage of this run: 40 requests answered by the model, 7 by the cache
        sd.finish({"usage": {"requests": 40, "cached": 7}})
    done = {"prepare": prepare_stage.run(plan).path, "profiles": str(profiles.path)}
    changed = what_changed(plan, done, previous_run(plan))
    assert "recomputed prepare, profiles; reused (Cached) nothing" in changed[0]
    assert changed[1] == ("  data: 6 interactions added, 1 removed (a changed rating counts as both); users +1 new, "
                          "0 gone; items +0 new, 0 gone")
    assert changed[2] == "  LLM: 40 requests sent, 7 answered from the response cache (reused stages sent none)"


def test_what_changed_compares_with_the_previous_run_of_the_same_configuration_only(tmp_path):
    raw = tmp_path / "raw"
    write_ratings(raw)
    first = make_plan(config(tmp_path, raw))
    record_run(first, {"prepare": prepare_stage.run(first).path})
    other = make_plan(config(tmp_path, raw).model_copy(update={"seed": 7}))  # another configuration
    assert previous_run(other) is None
    first_line = what_changed(other, {"prepare": prepare_stage.run(other).path}, None)[0]
    assert first_line.startswith("what changed: first finished run of my-csv with this configuration (")
    record_run(other, {"prepare": prepare_stage.run(other).path})
    again = make_plan(config(tmp_path, raw))
    prev = previous_run(again)
    assert prev["fingerprints"]["prepare"] == first.fingerprints["prepare"]  # not the seed-7 run recorded last


def test_what_changed_gives_the_headline_test_metrics_beside_their_change_since_the_previous_run(tmp_path):
    from lagcl.artifacts import StageDir
    from lagcl.meta import Headline

    def evaluate_folder(name: str, recall: float, ndcg: float) -> str:
        h = Headline(stage="evaluate", backbone="lightgcn", test_recall=recall, test_ndcg=ndcg, valid_recall=None,
                     control_test_recall=0.3, control_test_ndcg=0.25, data_level=False, rank_level=False,
                     rerank_level=False, variant="cf", groups=None, levels=[])
        with StageDir(tmp_path / "evaluate" / name, "evaluate", name) as sd:
            sd.finish(h.as_meta())
        return str(sd.path)

    plan = make_plan(config(tmp_path, tmp_path / "raw"))
    previous = {"finished_at": "earlier", "folders": {"evaluate": evaluate_folder("old", 0.3, 0.25)}}
    lines = what_changed(plan, {"evaluate": evaluate_folder("new", 0.32, 0.24)}, previous)
    assert lines[-1] == "  metrics (test): test_recall@20 0.3200 (+0.0200), test_ndcg@20 0.2400 (-0.0100)"
