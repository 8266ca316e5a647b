"""Losses of eq. 9-12 and the gradient claims of Proposition 1 (Appendix B.2-B.3)."""

import math

import torch

from lagcl.losses import (bpr_loss, group_aware_info_nce, info_nce, l2_reg, la_info_nce, la_info_nce_sim, labpr_loss,
                          lightgcl_info_nce, official_bpr, official_reg, total_loss)


def test_bpr_is_minus_mean_log_sigmoid_of_the_margin():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert math.isclose(bpr_loss(pos, neg).item(), expected, rel_tol=1e-6)


def test_a_triplet_weight_scales_its_term_in_bpr_and_labpr():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    terms = torch.nn.functional.softplus(neg - pos)
    w = torch.tensor([1.0, 0.25])
    assert math.isclose(bpr_loss(pos, neg, w).item(), ((terms[0] + 0.25 * terms[1]) / 2).item(), rel_tol=1e-6)
    hard = torch.tensor([False, True])
    assert math.isclose(labpr_loss(pos, neg, hard, 3.0, w).item(), ((terms[0] + 0.75 * terms[1]) / 2).item(),
                        rel_tol=1e-6)


def test_lightgcl_loss_contrasts_the_batch_against_every_node_with_a_clamped_positive():
    svd = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    gcn = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    nodes, tau = torch.tensor([0, 2]), 0.5
    expected = 0.0
    for n in nodes.tolist():
        scores = [float(svd[n] @ gcn[j]) / tau for j in range(3)]  # every node, not only the batch
        expected += math.log(sum(math.exp(s) for s in scores)) - max(-5.0, min(5.0, scores[n]))
    assert math.isclose(lightgcl_info_nce(svd, gcn, nodes, tau).item(), expected / 2, rel_tol=1e-5)
    assert float(svd[2] @ gcn[2]) / tau > 5  # node 2's positive is clamped at 5


def test_labpr_with_no_hard_triplet_is_bpr():
    pos, neg = torch.randn(7), torch.randn(7)
    assert torch.allclose(labpr_loss(pos, neg, torch.zeros(7, dtype=torch.bool), 3.0), bpr_loss(pos, neg))


def test_labpr_hard_triplet_gradient_is_exactly_w_h_times_easy_at_equal_margins():
    # Lemma 1 / eq. 27-28: identical r_ui - r_uj, one hard and one easy triplet
    pos = torch.tensor([0.7, 0.7], requires_grad=True)
    neg = torch.tensor([0.2, 0.2], requires_grad=True)
    w_h = 2.5
    labpr_loss(pos, neg, torch.tensor([True, False]), w_h).backward()
    assert math.isclose((pos.grad[0] / pos.grad[1]).item(), w_h, rel_tol=1e-6)
    assert math.isclose((neg.grad[0] / neg.grad[1]).item(), w_h, rel_tol=1e-6)
    assert neg.grad[0] > 0 > pos.grad[0]  # descent raises r_ui and lowers r_uj


def test_la_info_nce_equals_info_nce_with_one_temperature_and_unit_weight():
    torch.manual_seed(0)
    z1, z2 = torch.randn(12, 8), torch.randn(12, 8)
    group = torch.tensor([0, 1, 2] * 4)
    assert torch.allclose(la_info_nce(z1, z2, group, 0.3, 0.3, 0.3, 1.0), info_nce(z1, z2, 0.3), atol=1e-6)


def test_info_nce_matches_the_textbook_formula():
    torch.manual_seed(1)
    z1, z2, tau = torch.randn(5, 4), torch.randn(5, 4), 0.5
    s = torch.nn.functional.cosine_similarity(z1[:, None], z2[None], dim=-1) / tau
    expected = -torch.log(s.exp().diagonal() / s.exp().sum(1)).mean()
    assert torch.allclose(info_nce(z1, z2, tau), expected, atol=1e-6)


def _grad_ratio(d: float, tau_p=0.2, tau_e=0.09, tau_h=0.02, w_h=1.5) -> float:
    # row 0: positive at (0,0), a hard negative at (0,1) and an easy one at (0,2), both at similarity d
    sim = torch.tensor([[0.9, d, d], [0.1, 0.8, 0.0], [0.0, 0.2, 0.7]], requires_grad=True)
    hard = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    la_info_nce_sim(sim, hard, tau_p, tau_e, tau_h, w_h).backward()
    return (sim.grad[0, 1] / sim.grad[0, 2]).item()


def test_hard_negative_gradient_exceeds_easy_by_the_factor_of_eq_34():
    tau_e, tau_h, w_h = 0.09, 0.02, 1.5
    for d in (0.05, 0.2, 0.4):
        expected = w_h * tau_e / tau_h * math.exp(d * (1 / tau_h - 1 / tau_e))
        ratio = _grad_ratio(d, tau_e=tau_e, tau_h=tau_h, w_h=w_h)
        assert math.isclose(ratio, expected, rel_tol=1e-4)
        assert ratio > w_h > 1  # eq. 36


def test_la_info_nce_stays_finite_at_sharp_temperatures():
    z = torch.randn(6, 4)
    loss = la_info_nce(z, z, torch.zeros(6, dtype=torch.long), 0.2, 0.09, 0.002, 10.0)
    assert torch.isfinite(loss)


def test_l2_reg_is_half_squared_norm_per_triplet():
    a, b = torch.ones(4, 2), torch.full((4, 2), 2.0)
    assert math.isclose(l2_reg(a, b).item(), (8 + 32) / 8)


def test_total_loss_weights_the_parts_as_eq_12():
    t = total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), torch.tensor(4.0), 0.15, 0.01)
    assert math.isclose(t.item(), 1 + 0.15 * 5 + 0.04, rel_tol=1e-6)


# --- rank.reading: official (the authors' released code; docs/design.md 15) ------------------------------------

def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_official_bpr_is_minus_mean_log_of_1e5_plus_sigmoid_and_is_bounded():
    pos, neg = torch.tensor([2.0, 0.0, -100.0]), torch.tensor([1.0, 1.0, 0.0])
    sig = [1 / (1 + math.exp(-d)) for d in (1.0, -1.0, -100.0)]
    expected = sum(-math.log(1e-5 + s) for s in sig) / 3
    assert math.isclose(official_bpr(pos, neg).item(), expected, rel_tol=1e-6)
    assert math.isclose(official_bpr(pos[2:], neg[2:]).item(), -math.log(1e-5 + sig[2]), rel_tol=1e-6)  # ~ln 1e5
    w = torch.tensor([1.0, 0.5, 0.0])
    expected_w = (-math.log(1e-5 + sig[0]) - 0.5 * math.log(1e-5 + sig[1])) / 3
    assert math.isclose(official_bpr(pos, neg, w).item(), expected_w, rel_tol=1e-6)


def test_group_aware_info_nce_by_hand_clamps_temperatures_and_weighs_same_group_negatives_twice():
    z1 = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
    z2 = [[2.0, 1.0], [0.0, 1.0], [1.0, -1.0]]
    group = [0, 0, 1]
    tau_p, tau_e, tau_h = 0.5, 0.125, 0.1   # = tau 0.5 with ratios 0.25 and 0.2: tau_h 0.05 clamps to 0.1
    expected = 0.0
    for i in range(3):
        pos = math.exp(_cos(z1[i], z2[i]) / tau_p)
        denom = pos
        for j in range(3):
            if j != i:
                s = _cos(z1[i], z2[j])
                denom += 2 * math.exp(s / 0.1) if group[j] == group[i] else math.exp(s / tau_e)
        expected += -math.log(pos / denom + 1e-12)
    got = group_aware_info_nce(torch.tensor(z1), torch.tensor(z2), torch.tensor(group), tau_p, tau_e, 0.05, 2.0)
    assert math.isclose(got.item(), expected / 3, rel_tol=1e-5)


def test_group_aware_info_nce_of_one_group_is_plain_info_nce_at_the_positive_temperature_and_of_one_node_zero():
    z1, z2 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]), torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, -1.0]])
    same = torch.zeros(3, dtype=torch.long)
    assert math.isclose(group_aware_info_nce(z1, z2, same, 1.0, 0.25, 0.1, 2.0).item(), info_nce(z1, z2, 1.0).item(),
                        rel_tol=1e-6)
    # a temperature below 0.1 is clamped there, also in the one-group case
    assert math.isclose(group_aware_info_nce(z1, z2, same, 0.01, 0.25, 0.1, 2.0).item(),
                        info_nce(z1, z2, 0.1).item(), rel_tol=1e-6)
    assert group_aware_info_nce(z1[:1], z2[:1], same[:1], 1.0, 0.25, 0.1, 2.0).item() == 0.0


def test_official_reg_sums_frobenius_norms_over_the_batch_not_squares():
    users = torch.tensor([[3.0, 4.0], [0.0, 0.0]])   # ||.||_F = 5, batch 2
    items = torch.tensor([[1.0, 0.0], [0.0, 0.0]])   # ||.||_F = 1
    assert math.isclose(official_reg(users, items).item(), 5 / 2 + 1 / 2, rel_tol=1e-6)
