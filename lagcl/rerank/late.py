"""Late-interaction reranker: f_theta_rer of eq. 14 with each text encoded once, not once per pair.

The cross-encoder (`spec.style = cross`) reads one prompt I_u per (u, v in C_u) (eq. 13-14), so its cost grows
with users x |C_u|. Here (`spec.style = late`) the same fields of I_u are encoded separately by a sentence
encoder (all-MiniLM-L6-v2 by default, the embedding engine's `SentenceEncoder`): the user profile P_u once per
user, every item profile once per item (candidates and history items alike). A small head, trained with the
BCE of eq. 16 on the same labels (eq. 15, decision 10), combines them per pair:

    x_uv = [e_u * e_v, h+_u * e_v, h-_u * e_v, e_u.e_v, h+_u.e_v, h-_u.e_v, max_{i in R+_u} e_i.e_v,
            max_{i in R-_u} e_i.e_v, 1[R+_u], 1[R-_u], 1 - (rank_uv - 1) / |C_u|]
    s~_uv = MLP(x_uv)                                                          (the raw score of eq. 20)

with e = unit-norm text embeddings, h+_u / h-_u the mean embedding of the liked / disliked history R_u^pos-hist /
R_u^neg-hist (eq. 13) and rank_uv the CF rank that the compact prompt also shows. The encoder is frozen, so the
cost is (users + items) encodings plus a head that trains in seconds. Scores stay raw logits: eq. 20's softmax
over C_u happens in fusion, as for the cross-encoder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from lagcl.errors import LagclError

DONE = "done.json"
HEAD = "head.pt"
N_SCALARS = 8


@dataclass
class TextEmbeddings:
    """Unit-norm embeddings of the user and item profile texts, row `index[id]` for each id."""

    users: np.ndarray                 # [n_users_encoded, d]
    items: np.ndarray                 # [n_items_encoded, d]
    user_index: dict[int, int]
    item_index: dict[int, int]
    seconds: float = 0.0
    encoded: int = 0

    @property
    def dim(self) -> int:
        return int(self.items.shape[1])


def _cut(text: str, n: int) -> str:
    return text if n <= 0 or len(text) <= n else text[:n]


def encode_texts(encoder, user_text: dict[int, str], item_text: dict[int, str], users: Sequence[int],
                 items: Sequence[int], chars: int) -> TextEmbeddings:
    """Each user's and each item's profile text through `encoder` once (`encoder.encode(texts) -> [n, d]`),
    texts cut to `chars` characters (as the cross-encoder's prompt cuts them)."""
    t0 = time.time()
    users, items = sorted(set(int(u) for u in users)), sorted(set(int(i) for i in items))
    u_texts = [_cut(user_text.get(u, "A user."), chars) for u in users]
    i_texts = [_cut(item_text.get(i, f"item {i}"), chars) for i in items]
    vecs = np.asarray(encoder.encode(u_texts + i_texts), dtype=np.float32)
    if vecs.shape[0] != len(u_texts) + len(i_texts):
        raise LagclError(f"the encoder returned {vecs.shape[0]} vectors for {len(u_texts) + len(i_texts)} texts")
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return TextEmbeddings(vecs[:len(users)], vecs[len(users):], {u: k for k, u in enumerate(users)},
                          {i: k for k, i in enumerate(items)}, time.time() - t0, len(u_texts) + len(i_texts))


def history_items(hist: pl.DataFrame) -> set[int]:
    """Every item named in a liked or disliked history (they are encoded with the candidates)."""
    out: set[int] = set()
    for col in ("liked", "disliked"):
        if col in hist.columns:
            out.update(int(i) for lst in hist[col].to_list() if lst for i in lst)
    return out


def pair_features(pairs: pl.DataFrame, hist: pl.DataFrame, emb: TextEmbeddings, k: int) -> np.ndarray:
    """x_uv (module docstring) for each row (user, item, cf_rank) of `pairs`, in row order: [P, 3d + 8]."""
    import torch

    d = emb.dim
    users = pairs["user"].to_list()
    h = {int(r["user"]): r for r in hist.iter_rows(named=True)} if hist.height else {}
    uniq = sorted(set(int(u) for u in users))
    row_of = {u: n for n, u in enumerate(uniq)}
    width = max([1] + [len(h.get(u, {}).get(c) or []) for u in uniq for c in ("liked", "disliked")])
    # per user: padded history embeddings [U, width, d] with masks, for the mean and the max similarity
    lik = np.zeros((len(uniq), width, d), np.float32)
    dis = np.zeros((len(uniq), width, d), np.float32)
    lik_m = np.zeros((len(uniq), width), bool)
    dis_m = np.zeros((len(uniq), width), bool)
    for u, n in row_of.items():
        r = h.get(u, {})
        for arr, mask, col in ((lik, lik_m, "liked"), (dis, dis_m, "disliked")):
            ids = [i for i in (r.get(col) or []) if int(i) in emb.item_index]
            if ids:
                arr[n, :len(ids)] = emb.items[[emb.item_index[int(i)] for i in ids]]
                mask[n, :len(ids)] = True
    lik_t, dis_t = torch.from_numpy(lik), torch.from_numpy(dis)
    lik_mt, dis_mt = torch.from_numpy(lik_m), torch.from_numpy(dis_m)

    def mean_unit(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        s = (x * m.unsqueeze(-1)).sum(1)
        return s / s.norm(dim=1, keepdim=True).clamp_min(1e-12)

    h_like, h_dis = mean_unit(lik_t, lik_mt), mean_unit(dis_t, dis_mt)
    try:
        ui = torch.tensor([emb.user_index[int(u)] for u in users], dtype=torch.long)
        vi = torch.tensor([emb.item_index[int(v)] for v in pairs["item"].to_list()], dtype=torch.long)
    except KeyError as e:
        raise LagclError(f"id {e} has no text embedding: encode every user and item of the pairs first") from None
    rows = torch.tensor([row_of[int(u)] for u in users], dtype=torch.long)
    e_u, e_v = torch.from_numpy(emb.users)[ui], torch.from_numpy(emb.items)[vi]
    hl, hd = h_like[rows], h_dis[rows]
    max_sim = []
    for arr, mask in ((lik_t, lik_mt), (dis_t, dis_mt)):
        out = torch.empty(len(users))
        for s in range(0, len(users), 4096):   # [chunk, width, d] at a time keeps memory flat
            sl = slice(s, s + 4096)
            sims = torch.einsum("pwd,pd->pw", arr[rows[sl]], e_v[sl]).masked_fill(~mask[rows[sl]], -1.0)
            out[sl] = sims.max(1).values
        max_sim.append(out)
    has_l, has_d = lik_mt.any(1)[rows].float(), dis_mt.any(1)[rows].float()
    rank = torch.tensor(pairs["cf_rank"].to_list(), dtype=torch.float32)
    scalars = torch.stack([(e_u * e_v).sum(1), (hl * e_v).sum(1), (hd * e_v).sum(1), max_sim[0] * has_l,
                           max_sim[1] * has_d, has_l, has_d, 1.0 - (rank - 1.0) / max(k, 1)], dim=1)
    return torch.cat([e_u * e_v, hl * e_v, hd * e_v, scalars], dim=1).numpy()


def make_head(n_features: int, hidden: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


@dataclass
class HeadResult:
    head: object
    global_step: int
    train_loss: float | None
    seconds: float
    skipped: bool = False


def train_head(x: np.ndarray, y: Sequence[float], out_dir: Path, *, hidden: int, epochs: int, lr: float,
               weight_decay: float, batch_size: int, seed: int, device: str = "cpu", log=None) -> HeadResult:
    """Eq. 16 on x_uv: mean BCE of sigmoid(MLP(x)) against y_uv, Adam, seeded; the head goes to
    `out_dir/model/head.pt` with a `done.json` marker, so a finished training is loaded, never repeated."""
    import torch

    t0 = time.time()
    model_dir = Path(out_dir) / "model"
    done = model_dir / DONE
    if done.is_file():
        info = json.loads(done.read_text())
        head = make_head(info["features"], info["hidden"])
        head.load_state_dict(torch.load(model_dir / HEAD, map_location="cpu"))
        return HeadResult(head.to(device), info["global_step"], info["train_loss"], time.time() - t0, skipped=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = make_head(x.shape[1], hidden).to(device)
    xt = torch.from_numpy(np.asarray(x, np.float32)).to(device)
    yt = torch.tensor(list(y), dtype=torch.float32, device=device)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    step, loss_sum, loss_n = 0, 0.0, 0
    head.train()
    for epoch in range(epochs):
        perm = torch.randperm(xt.shape[0], generator=gen).to(device)
        for s in range(0, xt.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[idx]).squeeze(-1), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if epoch == epochs - 1:
                loss_sum, loss_n = loss_sum + float(loss.detach()) * len(idx), loss_n + len(idx)
    head.eval()
    train_loss = loss_sum / loss_n if loss_n else None
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in head.state_dict().items()}, model_dir / HEAD)
    done.write_text(json.dumps({"features": int(x.shape[1]), "hidden": hidden, "global_step": step,
                                "train_loss": train_loss, "epochs": epochs, "pairs": int(x.shape[0])}, indent=2))
    if log:
        log.info("rerank: late-interaction head trained, %d steps, last-epoch loss %.4f", step, train_loss or 0.0)
    return HeadResult(head, step, train_loss, time.time() - t0)


def score_features(head, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """s~_uv = MLP(x_uv), one raw logit per row, in row order."""
    import torch

    device = next(head.parameters()).device
    out = np.empty(x.shape[0], dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.asarray(x[s:s + batch_size], np.float32)).to(device)
            out[s:s + batch_size] = head(xb).squeeze(-1).double().cpu().numpy()
    return out
