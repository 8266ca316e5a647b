"""All-rank Recall@N / NDCG@N against a slow, obviously-correct reference."""

import math

import torch

from lagcl.evaluate import UserItems, evaluate, metrics_from_ranked, rank_topk


def slow_reference(scores: torch.Tensor, truth: dict[int, set], exclude: dict[int, set], k: int):
    recalls, ndcgs = [], []
    for u, targets in truth.items():
        if not targets:
            continue
        order = sorted((i for i in range(scores.shape[1]) if i not in exclude.get(u, set())),
                       key=lambda i: (-scores[u, i].item(), i))[:k]
        dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(order) if i in targets)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(targets), k)))
        recalls.append(sum(i in targets for i in order) / len(targets))
        ndcgs.append(dcg / idcg)
    return sum(recalls) / len(recalls), sum(ndcgs) / len(ndcgs)


def as_user_items(sets: dict[int, set], n_users: int, n_items: int) -> UserItems:
    pairs = [(u, i) for u, items in sets.items() for i in items]
    u = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    i = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return UserItems.from_pairs(u, i, n_users, n_items)


def random_case(seed: int, n_users=30, n_items=40):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_users, n_items, generator=g)  # continuous: no ties
    perm = [torch.randperm(n_items, generator=g).tolist() for _ in range(n_users)]
    train = {u: set(p[:int(torch.randint(0, 12, (1,), generator=g))]) for u, p in enumerate(perm)}
    truth = {u: set(p[15:15 + int(torch.randint(0, 8, (1,), generator=g))]) for u, p in enumerate(perm)}
    return scores, train, truth


def test_recall_and_ndcg_equal_the_slow_reference_with_training_items_masked():
    for seed in range(3):
        scores, train, truth = random_case(seed)
        n_u, n_i = scores.shape
        got = evaluate(lambda users: scores[users], as_user_items(truth, n_u, n_i), as_user_items(train, n_u, n_i),
                       ks=(5, 10, 20), batch_size=7)
        for k in (5, 10, 20):
            r, n = slow_reference(scores, truth, train, k)
            assert math.isclose(got[("recall", k)], r, rel_tol=1e-9)
            assert math.isclose(got[("ndcg", k)], n, rel_tol=1e-9)


def test_perfect_ranking_scores_one_and_masked_items_are_never_ranked():
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.5], [0.0, 5.0, 6.0, 7.0]])
    truth = UserItems.from_pairs(torch.tensor([0, 1]), torch.tensor([1, 2]), 2, 4)
    exclude = UserItems.from_pairs(torch.tensor([0, 1]), torch.tensor([0, 3]), 2, 4)
    m = evaluate(lambda u: scores[u], truth, exclude, ks=(1,))
    assert m[("recall", 1)] == 1.0 and m[("ndcg", 1)] == 1.0
    top, _ = rank_topk(lambda u: scores[u], torch.tensor([0, 1]), 3, exclude)
    assert 0 not in top[0].tolist() and 3 not in top[1].tolist()


def test_recall_divides_by_all_truth_items_and_ndcg_by_the_ideal_at_k():
    ranked = torch.tensor([[3, 0, 1]])
    truth = UserItems.from_pairs(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 5, 6, 7]), 1, 8)
    m = metrics_from_ranked(ranked, torch.tensor([0]), truth, ks=(2,))
    assert m[("recall", 2)] == 0.25
    assert math.isclose(m[("ndcg", 2)], (1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_users_without_truth_items_are_left_out_of_the_mean():
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    truth = UserItems.from_pairs(torch.tensor([0]), torch.tensor([0]), 2, 2)
    assert evaluate(lambda u: scores[u], truth, None, ks=(1,))[("recall", 1)] == 1.0


def test_union_of_item_sets():
    a = UserItems.from_pairs(torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 3)
    b = UserItems.from_pairs(torch.tensor([0, 1]), torch.tensor([2, 1]), 2, 3)
    assert a.union(b).dense(torch.arange(2)).tolist() == [[True, False, True], [False, True, False]]
