"""Typed views of the manifest meta that code other than the writing stage reads back, and the one place its
metric keys are spelled.

The on-disk keys stay what the stages have always written ("test_recall@20", "control_test_ndcg@20",
"test_recall@20_p", ...): `metric_key` builds them, the stages write their headline through `Headline.as_meta`,
and readers go through `of` instead of spelling the keys again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lagcl.artifacts import read_manifest


def metric_key(split: str, metric: str = "recall", k: int = 20, segment: str | None = None, stat: str | None = None,
               of: str | None = None) -> str:
    """The meta key of one headline number: `{of}_{split}_{metric}@{k}_{segment}_{stat}` with the parts that are
    given ("test_recall@20", "valid_ndcg@20_cold", "test_recall@20_p" for a paired test's p, "control_test_recall@20"
    for the control's number in another stage's meta)."""
    key = f"{split}_{metric}@{k}"
    if of:
        key = f"{of}_{key}"
    return key + "".join(f"_{x}" for x in (segment, stat) if x)


TEST_RECALL, TEST_NDCG, VALID_RECALL = metric_key("test"), metric_key("test", "ndcg"), metric_key("valid")


def meta_of(folder: Path | str) -> dict[str, Any]:
    """A stage folder's manifest meta ({} while it has no manifest)."""
    return (read_manifest(Path(folder)) or {}).get("meta", {})


@dataclass(frozen=True)
class PrepareMeta:
    """What prepare found in the raw files (lagcl.data.prepare's stats)."""

    stats: dict[str, Any]
    dataset: str | None

    @classmethod
    def of(cls, meta: dict[str, Any]) -> "PrepareMeta":
        return cls(meta["stats"], meta.get("dataset"))


@dataclass(frozen=True)
class RequestsMeta:
    """An LLM stage's requests: `failed` ones make a finished stage run again (tasks.base.finished); `usage` is the
    engine's accounting (lagcl.llm.accounting: calls, tokens, cost_usd); `engine`/`model` what answered them."""

    failed: int
    usage: dict[str, Any]
    engine: str | None = None
    model: str | None = None
    approximate: bool = False

    @classmethod
    def of(cls, meta: dict[str, Any]) -> "RequestsMeta":
        return cls(int(meta.get("failed") or 0), meta.get("usage") or {}, meta.get("engine"), meta.get("model"),
                   bool(meta.get("approximate", False)))

    @classmethod
    def of_engine(cls, engine: Any, failed: int) -> "RequestsMeta":
        """What `engine` (a lagcl.semantic engine) answered, with `failed` requests left to ask again."""
        return cls(int(failed), engine.usage().__dict__, engine.name, engine.model, engine.approximate)

    @property
    def cost_usd(self) -> float | None:
        return self.usage.get("cost_usd")

    def as_meta(self) -> dict[str, Any]:
        return {"failed": self.failed, "engine": self.engine, "model": self.model, "approximate": self.approximate,
                "usage": self.usage}


@dataclass(frozen=True)
class Headline:
    """A control, gcl or evaluate run's test numbers and the levels it kept (Table 2 / Table 3 rows)."""

    stage: str
    backbone: str | None
    test_recall: float
    test_ndcg: float
    valid_recall: float | None
    control_test_recall: float | None
    control_test_ndcg: float | None
    data_level: bool | None
    rank_level: bool | None
    rerank_level: bool | None
    variant: str | None  # the chosen CF variant (gcl) or the headline ranking (evaluate)
    groups: str | None
    levels: list[dict]

    @classmethod
    def of(cls, stage: str, meta: dict[str, Any]) -> "Headline | None":
        """None for a run that wrote no test numbers (an older or unfinished folder)."""
        if TEST_RECALL not in meta:
            return None
        control = stage == "control"
        return cls(
            stage=stage, backbone=meta.get("backbone"),
            test_recall=meta[TEST_RECALL], test_ndcg=meta[TEST_NDCG],
            valid_recall=meta.get(VALID_RECALL),
            control_test_recall=meta[TEST_RECALL] if control else meta.get(metric_key("test", of="control")),
            control_test_ndcg=meta[TEST_NDCG] if control else meta.get(metric_key("test", "ndcg", of="control")),
            # "augmented": what gcl runs before the validation gate called the data level
            data_level=meta.get("data_level", meta.get("augmented")), rank_level=meta.get("rank_level"),
            rerank_level=meta.get("rerank_level"),
            variant=meta.get(cls.variant_key(stage)), groups=meta.get("groups"), levels=meta.get("levels", []))

    @staticmethod
    def variant_key(stage: str) -> str:
        return "headline_variant" if stage == "evaluate" else "variant"

    def as_meta(self) -> dict[str, Any]:
        """The keys `of` reads, as the stage writes them (None values and an empty chain left out; the control's
        own numbers are its test numbers, not written twice). `Headline.of(stage, h.as_meta()) == h`."""
        out: dict[str, Any] = {
            "backbone": self.backbone, TEST_RECALL: self.test_recall, TEST_NDCG: self.test_ndcg,
            VALID_RECALL: self.valid_recall, "data_level": self.data_level, "rank_level": self.rank_level,
            "rerank_level": self.rerank_level, self.variant_key(self.stage): self.variant, "groups": self.groups,
            "levels": self.levels or None}
        if self.stage != "control":
            out[metric_key("test", of="control")] = self.control_test_recall
            out[metric_key("test", "ndcg", of="control")] = self.control_test_ndcg
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class EvaluateMeta:
    """The evaluate stage's headline beside CF alone, and the fusion that made it (eq. 19-21)."""

    headline: Headline
    users: int
    candidates: int
    cf_test_recall: float
    cf_test_ndcg: float
    alpha: float
    tau: float
    fallback: str | None = None  # why the headline is CF alone (the reranker left out), None when it is the fusion
    cannot_move: tuple[str, ...] = ()  # the metrics reranking |C_u| candidates cannot change ("recall@20", ...)

    @classmethod
    def of(cls, meta: dict[str, Any]) -> "EvaluateMeta":
        return cls(Headline.of("evaluate", meta), meta["users"], meta["candidates"],
                   meta[metric_key("test", of="cf")], meta[metric_key("test", "ndcg", of="cf")], meta["alpha"],
                   meta["tau"], (meta.get("fusion") or {}).get("fallback"), tuple(meta.get("cannot_move") or ()))
