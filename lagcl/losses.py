"""Recommendation and contrastive losses: BPR, LABPR (eq. 9), InfoNCE, LA-InfoNCE (eq. 10-11), and
the total loss (eq. 12); and the same terms as the authors' released code computes them (`rank.reading:
official`, docs/design.md decision 15: `official_bpr`, `group_aware_info_nce`, `official_reg`). Sums over triplets / nodes in the paper are means over the batch here, which
only rescales the learning rate and keeps lambda_cl, lambda_reg independent of the batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """-mean ln sigma(r_ui - r_uj) (Rendle et al., 2009); `weight` scales each triplet (an augmented
    positive weighs less than an observed one, docs/design.md 13)."""
    loss = F.softplus(neg - pos)
    return (loss if weight is None else weight * loss).mean()


def labpr_loss(pos: torch.Tensor, neg: torch.Tensor, hard: torch.Tensor, w_h: float,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """LABPR, eq. 9: BPR whose hard triplets (negative j in the positive i's item group, eq. 7) weigh
    w_h and easy ones (eq. 8) weigh 1. Its gradient w.r.t. a hard margin is exactly w_h times that of
    an easy one with the same margin (Appendix B.2, eq. 27-29). The same form serves the item -> user
    half (negative user in the positive user's group). `weight` as in `bpr_loss`."""
    w = torch.where(hard, torch.as_tensor(w_h, dtype=pos.dtype), torch.ones((), dtype=pos.dtype))
    return ((w if weight is None else w * weight) * F.softplus(neg - pos)).mean()


def _cosine(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    return F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Standard InfoNCE over in-batch negatives: row i's positive is z2[i], its negatives z2[j != i];
    cosine similarity, one temperature (the backbones' own contrastive loss)."""
    logits = _cosine(z1, z2) / tau
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def lightgcl_info_nce(z_svd: torch.Tensor, z_gcn: torch.Tensor, nodes: torch.Tensor, tau: float) -> torch.Tensor:
    """LightGCL's contrastive loss as its reference code computes it (Cai et al., 2023, eq. 8): dot-product
    scores (no normalisation) of the batch nodes' SVD view against the GCN view of EVERY node (not only the
    batch), the positive (same node) clamped to [-5, 5] after the temperature:
    mean_i [log sum_j exp(g_i . e_j / tau) - clamp(g_i . e_i / tau, -5, 5)]."""
    g = z_svd[nodes]
    neg = torch.logsumexp(g @ z_gcn.T / tau, dim=1).mean()
    pos = ((g * z_gcn[nodes]).sum(-1) / tau).clamp(-5.0, 5.0).mean()
    return neg - pos


def la_info_nce_sim(sim: torch.Tensor, hard: torch.Tensor, tau_p: float, tau_e: float, tau_h: float,
                    w_h: float) -> torch.Tensor:
    """LA-InfoNCE (eq. 10-11) on a similarity matrix: sim[i, i] is the positive pair (temperature
    tau_p); an off-diagonal j is a hard negative where hard[i, j] (same group, weight w_h, temperature
    tau_h) and an easy one otherwise (temperature tau_e). Z_i of eq. 11 is computed as a logsumexp,
    w_h entering as + ln w_h, so sharp temperatures cannot overflow."""
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    hard = hard & ~eye
    logits = torch.where(hard, sim / tau_h + math.log(w_h), sim / tau_e)
    logits = torch.where(eye, sim / tau_p, logits)
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def la_info_nce(z1: torch.Tensor, z2: torch.Tensor, group: torch.Tensor, tau_p: float, tau_e: float,
                tau_h: float, w_h: float) -> torch.Tensor:
    """LA-InfoNCE (eq. 10-11) between two views of the same nodes; `group[i]` is node i's semantic
    group (user groups for the user term, item groups for the item term), hard = same group."""
    hard = group[:, None] == group[None, :]
    return la_info_nce_sim(_cosine(z1, z2), hard, tau_p, tau_e, tau_h, w_h)


# the authors' code clamps every temperature of its group-aware InfoNCE from below
OFFICIAL_MIN_TAU = 0.1


def official_bpr(pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BPR as the authors' code writes it: -mean ln(1e-5 + sigma(r_ui - r_uj)) (their `10e-6`); the 1e-5 bounds
    a triplet's loss by ln 1e5 where softplus grows without bound. `weight` as in `bpr_loss`."""
    loss = -torch.log(1e-5 + torch.sigmoid(pos - neg))
    return (loss if weight is None else weight * loss).mean()


def group_aware_info_nce(z1: torch.Tensor, z2: torch.Tensor, group: torch.Tensor, tau_p: float, tau_e: float,
                         tau_h: float, w_h: float) -> torch.Tensor:
    """LA-InfoNCE (eq. 10-11) as the authors' `group_aware_InfoNCE` computes it: each temperature clamped to
    >= 0.1; same-group negatives (temperature tau_h) enter the denominator w_h times, others at tau_e; the
    row loss is -ln(p + 1e-12) of the positive's share p; a batch whose nodes all share one group is plain
    InfoNCE at tau_p; one node gives 0."""
    n = z1.shape[0]
    if n <= 1:
        return z1.new_zeros(())
    tau_p, tau_e, tau_h = (max(t, OFFICIAL_MIN_TAU) for t in (tau_p, tau_e, tau_h))
    sim = _cosine(z1, z2)
    hard = group[:, None] == group[None, :]
    if bool(hard.all()):
        logits = sim / tau_p
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    logits = torch.where(hard & ~eye, sim / tau_h + math.log(w_h), sim / tau_e)
    logits = torch.where(eye, sim / tau_p, logits)
    share = torch.exp(logits.diagonal() - torch.logsumexp(logits, dim=1))
    return -torch.log(share + 1e-12).mean()


def official_reg(*embeddings: torch.Tensor) -> torch.Tensor:
    """The authors' L_reg: sum over the given per-triplet embedding rows of ||E||_F / batch (the Frobenius norm,
    not its square), taken on the propagated user and positive-item embeddings the BPR term scores."""
    return sum(e.norm(p=2) / e.shape[0] for e in embeddings)


def l2_reg(*embeddings: torch.Tensor) -> torch.Tensor:
    """L_reg of eq. 12 over the parameters a batch touches (its ego embeddings), per triplet."""
    n = embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / (2 * n)


def total_loss(rec: torch.Tensor, cl_user: torch.Tensor, cl_item: torch.Tensor, reg: torch.Tensor,
               lambda_cl: float, lambda_reg: float) -> torch.Tensor:
    """Eq. 12: L_labpr + lambda_cl (L_lainfo^user + L_lainfo^item) + lambda_reg L_reg (with rank off the
    same sum of the backbone's own BPR and InfoNCE)."""
    return rec + lambda_cl * (cl_user + cl_item) + lambda_reg * reg
