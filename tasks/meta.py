"""Typed views of the manifest meta that code other than the writing stage reads back.

The on-disk keys stay what the stages have always written ("test_recall@20", ...); readers go through these
views instead of spelling the keys again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lagcl.artifacts import read_manifest


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
    """An LLM stage's requests: `failed` ones make a finished stage run again (tasks.base.finished)."""

    failed: int
    usage: dict[str, Any]

    @classmethod
    def of(cls, meta: dict[str, Any]) -> "RequestsMeta":
        return cls(int(meta.get("failed") or 0), meta.get("usage") or {})


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
        if "test_recall@20" not in meta:
            return None
        control = stage == "control"
        return cls(
            stage=stage, backbone=meta.get("backbone"),
            test_recall=meta["test_recall@20"], test_ndcg=meta["test_ndcg@20"],
            valid_recall=meta.get("valid_recall@20"),
            control_test_recall=meta["test_recall@20"] if control else meta.get("control_test_recall@20"),
            control_test_ndcg=meta["test_ndcg@20"] if control else meta.get("control_test_ndcg@20"),
            # "augmented": what gcl runs before the validation gate called the data level
            data_level=meta.get("data_level", meta.get("augmented")), rank_level=meta.get("rank_level"),
            rerank_level=meta.get("rerank_level"),
            variant=meta.get("headline_variant") if stage == "evaluate" else meta.get("variant"),
            groups=meta.get("groups"), levels=meta.get("levels", []))


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
        return cls(Headline.of("evaluate", meta), meta["users"], meta["candidates"], meta["cf_test_recall@20"],
                   meta["cf_test_ndcg@20"], meta["alpha"], meta["tau"], (meta.get("fusion") or {}).get("fallback"),
                   tuple(meta.get("cannot_move") or ()))
