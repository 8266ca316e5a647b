"""`rank.reading: official`: the authors' negative sampler and objective (docs/design.md decision 15)."""

import polars as pl
import pytest
import torch

from lagcl.config import GCLConfig, RankConfig, load_config
from lagcl.models import Graph, build_model
from lagcl.sampling import NegativeSampler
from lagcl.train import Trainer, official_batch_losses
from lagcl.train_data import build_train_data, category_groups
from tests.test_train import tiny_tables

# items 0-2 in group 0, 3-4 in group 1, 5 alone in group 2
ITEM_GROUP = torch.tensor([0, 0, 0, 1, 1, 2])
POSITIVES = {0: [0, 3], 1: [5], 2: [3, 4]}


def sampler() -> NegativeSampler:
    users = torch.tensor([u for u, items in POSITIVES.items() for _ in items])
    items = torch.tensor([i for its in POSITIVES.values() for i in its])
    return NegativeSampler(3, 6, users, items, item_group=ITEM_GROUP)


def draws(user: int, positive: int, n: int = 3000):
    easy, hard, from_group = sampler().sample_easy_hard(torch.full((n,), user), torch.full((n,), positive),
                                                        torch.Generator().manual_seed(0))
    return set(easy.tolist()), set(hard.tolist()), from_group


def test_the_easy_negative_is_a_non_positive_outside_the_positives_group_and_the_hard_one_from_inside_it():
    easy, hard, from_group = draws(0, 0)
    assert easy == {4, 5}            # not 1, 2 (the positive's group), not 3 (a positive)
    assert hard == {1, 2}            # the group's members less the user's positive 0
    assert bool(from_group.all())


def test_a_group_of_one_gives_a_uniform_non_positive_hard_negative():
    easy, hard, from_group = draws(1, 5)
    assert hard == {0, 1, 2, 3, 4} and not bool(from_group.any())
    assert easy == {0, 1, 2, 3, 4}


def test_a_group_made_only_of_the_users_positives_falls_back_to_a_uniform_non_positive():
    easy, hard, from_group = draws(2, 3)
    assert hard == {0, 1, 2, 5} and not bool(from_group.any())
    assert easy == {0, 1, 2, 5}


def test_the_official_preset_is_the_authors_xsimgcl_settings():
    cfg = load_config(data="ml-100k", model="xsimgcl-official")
    g, r = cfg.gcl, cfg.rank
    assert (g.backbone, g.n_layers, g.l_star, g.eps, g.lr, g.lambda_reg, g.batch_size, g.epochs, g.emb_dim) == \
        ("xsimgcl", 2, 1, 0.2, 0.0035, 1e-4, 1024, 50, 64)
    assert (r.reading, r.w_h, r.tau_p, r.tau_e_ratio * r.tau_p, r.tau_h_ratio * r.tau_p, r.lambda_cl) == \
        ("official", 2.0, 1.0, 0.25, 0.1, 0.17)


def test_the_official_reading_refuses_an_item_side_term_it_does_not_have():
    with pytest.raises(ValueError, match="rank.item_side"):
        RankConfig(reading="official", item_side=0.5)


def _data():
    inter, users, items = tiny_tables()
    ug, ig = category_groups(inter, items, users.height, items.height)
    return build_train_data(inter, users.height, items.height, None, ug, ig), users.height, items.height


@pytest.mark.parametrize("backbone", ["lightgcn", "xsimgcl", "sgl", "lightgcl"])
def test_every_backbone_trains_with_the_official_reading_and_its_loss_goes_down(backbone):
    data, n_users, n_items = _data()
    gcl = GCLConfig(backbone=backbone, emb_dim=8, n_layers=2, epochs=6, patience=50, batch_size=64, lr=0.01)
    model = build_model(gcl, Graph(data.edge_users, data.edge_items, n_users, n_items), 3)
    rank = RankConfig(reading="official", w_h=2.0, tau_p=1.0, tau_e_ratio=0.25, tau_h_ratio=0.1, lambda_cl=0.17)
    result = Trainer(model, data, gcl, rank, seed=3).fit(progress=False)
    losses = result.epochs["loss"].to_list()
    assert losses[-1] < losses[0]
    # 3 genre groups over 60 items: nearly every hard negative comes from the positive's group
    assert result.epochs["hard"].min() > 0.9
    contrastive = backbone != "lightgcn"
    assert (result.epochs["cl"].min() > 0) == contrastive


def test_the_official_batch_loss_is_bpr_easy_plus_w_h_bpr_hard_plus_cl_and_their_reg():
    data, n_users, n_items = _data()
    gcl = GCLConfig(backbone="lightgcn", emb_dim=4, n_layers=1, lambda_reg=0.5)
    model = build_model(gcl, Graph(data.edge_users, data.edge_items, n_users, n_items), 3)
    rank = RankConfig(reading="official", w_h=3.0)
    users, items = torch.tensor([0, 1]), torch.tensor([int(data.pair_items[0]), int(data.pair_items[1])])
    easy, hard = torch.tensor([5, 6]), torch.tensor([7, 8])
    parts = official_batch_losses(model, data, users, items, easy, hard, torch.tensor([True, False]), gcl, rank,
                                  torch.Generator().manual_seed(0))
    with torch.no_grad():
        u, i = model.embeddings()
        pos = (u[users] * i[items]).sum(-1)

        def bpr(neg):
            return -torch.log(1e-5 + torch.sigmoid(pos - (u[users] * i[neg]).sum(-1))).mean()
        rec = bpr(easy) + 3.0 * bpr(hard)
        reg = u[users].norm() / 2 + i[items].norm() / 2
    assert torch.isclose(parts["rec"], rec) and torch.isclose(parts["reg"], reg)
    assert torch.isclose(parts["loss"], rec + 0.5 * reg)
    assert parts["hard"].item() == 0.5 and torch.isclose(parts["hard_loss"], 3.0 * bpr(hard) / rec)


def test_when_one_group_holds_every_item_the_easy_negative_is_a_plain_non_positive():
    one = NegativeSampler(1, 4, torch.tensor([0]), torch.tensor([1]), item_group=torch.zeros(4, dtype=torch.long))
    easy, hard, from_group = one.sample_easy_hard(torch.zeros(500, dtype=torch.long), torch.ones(500, dtype=torch.long),
                                                  torch.Generator().manual_seed(0))
    assert set(easy.tolist()) == {0, 2, 3} and set(hard.tolist()) == {0, 2, 3} and bool(from_group.all())
