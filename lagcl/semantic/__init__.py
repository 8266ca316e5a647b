"""Semantic operations (profile, score, partition, similarity) over an LLM or the embedding engine."""

from __future__ import annotations

from pathlib import Path

from lagcl.config import Config
from lagcl.semantic.base import SemanticEngine


def make_engine(cfg: Config, cache_dir: Path, stage: str | None = None) -> SemanticEngine:
    """The engine named by `engine.name`; LLM backends get the response cache under `cache_dir/llm`, and,
    for `stage`, the budget that stage may spend (llm.stage_budget_usd beside llm.budget_usd). The embedding
    engine shows as many rated items per profile as the requests carry (`profiles.history`) and seeds its
    k-means (eq. 5) with the run's `seed`."""
    if stage is not None:
        cfg = cfg.model_copy(update={"llm": cfg.llm.for_stage(stage)})
    if cfg.engine.name == "embedding":
        from lagcl.semantic.embedding import EmbeddingEngine

        return EmbeddingEngine(cfg.engine, domain=cfg.data.domain, history=cfg.profiles.history, seed=cfg.seed)
    from lagcl.semantic.llm_engine import LLMEngine

    return LLMEngine(cfg.engine, cfg.llm, domain=cfg.data.domain, cache_dir=Path(cache_dir) / "llm")
