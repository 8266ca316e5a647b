"""Batched scoring of every (u, v in C_u) by the trained reranker: the raw relevance score s~_uv of eq. 20
(the classifier's logit; eq. 20's softmax over C_u happens in fusion)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 512,
                device: str = "auto") -> np.ndarray:
    """One logit per text, in the input order, on `device` (rerank.spec.device: auto = CUDA when available; a
    GPU reranker is trained by the launcher and reloaded on the CPU, so it moves here). Texts are batched by
    length, so padding (and time) stays small."""
    import torch

    from lagcl.device import resolve_device
    from lagcl.rerank.train import prepare_tokenizer

    prepare_tokenizer(model, tokenizer)
    model.eval()
    device = torch.device(resolve_device(device))
    if next(model.parameters()).device != device:
        model.to(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty(len(texts), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(device)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            out[idx] = logits.float().reshape(len(idx), -1)[:, 0].cpu().numpy()
    return out
