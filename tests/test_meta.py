"""The manifest meta other code reads back (lagcl/meta.py): its keys built in one place, and what a stage writes
through a typed view reads back as the same view."""

from lagcl.meta import EvaluateMeta, Headline, RequestsMeta, metric_key


def test_metric_keys_are_the_ones_the_stages_have_always_written():
    assert metric_key("test") == "test_recall@20"
    assert metric_key("valid", "ndcg", segment="cold") == "valid_ndcg@20_cold"
    assert metric_key("test", stat="p") == "test_recall@20_p"
    assert metric_key("test", "ndcg", of="control") == "control_test_ndcg@20"
    assert metric_key("test", k=50) == "test_recall@50"


def test_a_headline_written_through_its_view_reads_back_as_the_same_view():
    gcl = Headline(stage="gcl", backbone="lightgcn", test_recall=0.31, test_ndcg=0.27, valid_recall=0.35,
                   control_test_recall=0.30, control_test_ndcg=0.26, data_level=False, rank_level=True,
                   rerank_level=None, variant="lightgcn+rank", groups="groups (engine)", levels=[{"level": "control"}])
    meta = gcl.as_meta()
    assert meta["test_recall@20"] == 0.31 and meta["control_test_ndcg@20"] == 0.26 and "rerank_level" not in meta
    assert Headline.of("gcl", meta) == gcl


def test_the_control_writes_its_numbers_once_and_reads_them_back_as_its_own_control():
    control = Headline(stage="control", backbone="lightgcn", test_recall=0.30, test_ndcg=0.26, valid_recall=0.33,
                       control_test_recall=0.30, control_test_ndcg=0.26, data_level=False, rank_level=False,
                       rerank_level=None, variant="control", groups=None, levels=[])
    meta = control.as_meta()
    assert not any(k.startswith("control_") for k in meta)
    assert Headline.of("control", meta) == control


def test_the_evaluate_headline_is_its_chosen_ranking_beside_cf_alone():
    h = Headline(stage="evaluate", backbone="lightgcn", test_recall=0.32, test_ndcg=0.28, valid_recall=None,
                 control_test_recall=0.30, control_test_ndcg=0.26, data_level=True, rank_level=False,
                 rerank_level=True, variant="cf+rerank (tuned)", groups=None, levels=[])
    meta = {**h.as_meta(), "users": 938, "candidates": 20, "cf_test_recall@20": 0.31, "cf_test_ndcg@20": 0.27,
            "alpha": 0.7, "tau": 0.3, "fusion": {"fallback": None}, "cannot_move": ["recall@20"]}
    assert meta["headline_variant"] == "cf+rerank (tuned)" and "variant" not in meta
    e = EvaluateMeta.of(meta)
    assert (e.headline, e.cf_test_recall, e.alpha, e.fallback, e.cannot_move) == (h, 0.31, 0.7, None, ("recall@20",))


def test_an_llm_stages_requests_written_through_their_view_read_back_as_the_same_view():
    written = RequestsMeta(2, {"calls": 5, "cost_usd": 0.25}, "openai", "gpt-5-mini", False)
    meta = {"users": 10, **written.as_meta()}

    assert meta["failed"] == 2 and meta["usage"]["cost_usd"] == 0.25 and meta["engine"] == "openai"
    assert RequestsMeta.of(meta) == written and RequestsMeta.of(meta).cost_usd == 0.25
    assert RequestsMeta.of({}) == RequestsMeta(0, {}, None, None, False)
