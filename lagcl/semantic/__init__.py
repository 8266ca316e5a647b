"""Semantic operations (profile, score, partition, similarity) over an LLM or the embedding engine."""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from lagcl.config import Config
from lagcl.semantic.base import SemanticEngine

if TYPE_CHECKING:
    from lagcl.llm.accounting import Budget


def make_engine(cfg: Config, cache_dir: Path, budget: "Budget | None" = None) -> SemanticEngine:
    """The engine named by `engine.name`; LLM backends get the response cache under `cache_dir/llm` and
    `budget`, what they may spend (a stage's run-wide budget from the planner, tasks/budget.py; without one
    llm.budget_usd caps what this engine pays). The embedding engine costs nothing, shows as many rated items
    per profile as the requests carry (`profiles.history`) and seeds its k-means (eq. 5) with the run's `seed`."""
    if cfg.engine.name == "embedding":
        from lagcl.semantic.embedding import EmbeddingEngine

        return EmbeddingEngine(cfg.engine, domain=cfg.data.domain, history=cfg.profiles.history, seed=cfg.seed)
    from lagcl.semantic.llm_engine import LLMEngine

    return LLMEngine(cfg.engine, cfg.llm, domain=cfg.data.domain, cache_dir=Path(cache_dir) / "llm", budget=budget)
