"""The checks every score reply (eq. 2-3) and partition reply (eq. 5) passes against its request,
whichever engine wrote it.

The LLM engine applies them to the parsed JSON (lagcl.semantic.prompts: what fails becomes the text
of a repair request); the augment and groups stages apply them again to what any engine returns,
because an engine is only an interface to them (lagcl.augment, lagcl.groups: what fails is counted
and never guessed). One set of rules, so the two can never disagree on what a usable reply is.

Ids are compared as text (`str(id).strip()`): a JSON reply names them as strings, an engine as ints. The
text an asked id is known by is its label where the request showed one (the dataset's own id), else the id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

SCORE_RANGE = (0.0, 10.0)  # eq. 2-3


def valid_score(value: Any) -> bool:
    """A number (not a bool, not text) that is finite and in [0, 10]."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and SCORE_RANGE[0] <= value <= SCORE_RANGE[1])


def _id_text(raw: Any) -> str:
    return str(raw).strip() if raw is not None else ""


def _by_text(asked: Sequence[int], labels: Mapping[int, str] | None) -> dict[str, int]:
    """The text each asked id goes by in a reply -> the id."""
    if labels is None:
        return {str(i): i for i in asked}
    return {_id_text(labels.get(i) or i): i for i in asked}


@dataclass
class ScoreCheck:
    """What a score reply says about the asked ids. Invalid entries are dropped, never kept; an id
    rated twice with two different scores contradicts itself and keeps neither (the same score twice
    is kept once)."""

    scores: dict[int, float] = field(default_factory=dict)  # asked id -> its one valid score
    unknown: list[str] = field(default_factory=list)  # ids not asked ("(missing id)" for an entry without one)
    bad: list[tuple[str | None, Any]] = field(default_factory=list)  # (id, score not in [0, 10]), or
    #   (None, description) for an entry that is not a rating at all
    twice: list[int] = field(default_factory=list)  # asked ids rated more than once, in asked order
    contradicted: set[int] = field(default_factory=set)  # of those, the ones given two different scores
    missing: list[int] = field(default_factory=list)  # asked ids without a valid score (not contradicted)

    @property
    def clean(self) -> bool:
        return not (self.unknown or self.bad or self.twice or self.missing)


def check_scores(asked: Sequence[int], ratings: Iterable[tuple[Any, Any] | str],
                 labels: Mapping[int, str] | None = None) -> ScoreCheck:
    """Check (id, score) ratings, in reply order, against the asked ids (named by `labels` where given); a
    str in `ratings` describes an entry that is not a rating."""
    asked_text = _by_text(asked, labels)
    out = ScoreCheck()
    rated: dict[int, int] = {}
    for rating in ratings:
        if isinstance(rating, str):
            out.bad.append((None, rating))
            continue
        raw_id, score = rating
        item = _id_text(raw_id)
        if item not in asked_text:
            out.unknown.append(item or "(missing id)")
            continue
        if not valid_score(score):
            out.bad.append((item, score))
            continue
        item_id = asked_text[item]
        rated[item_id] = rated.get(item_id, 0) + 1
        if item_id in out.scores and out.scores[item_id] != score:
            out.contradicted.add(item_id)
        out.scores.setdefault(item_id, float(score))
    for item_id in out.contradicted:
        del out.scores[item_id]
    out.twice = [i for i in asked if rated.get(i, 0) > 1]
    out.missing = [i for i in asked if i not in out.scores and i not in out.contradicted]
    return out


@dataclass
class MemberCheck:
    """What a partition reply says about the asked ids: each reply group's members that were asked and
    not placed before (an id placed twice keeps its first group), and the ids it left out."""

    members: list[list[int]]  # one list per reply group, in reply order; empty when none was usable
    unknown: list[str]  # members not asked
    duplicated: list[str]  # members already placed in an earlier group
    missing: list[int]  # asked ids placed nowhere, in asked order


def check_members(asked: Sequence[int], groups: Iterable[Iterable[Any]],
                  labels: Mapping[int, str] | None = None) -> MemberCheck:
    """Check the member lists of a partition reply (eq. 5) against the asked ids (named by `labels` where
    given)."""
    asked_text = _by_text(asked, labels)
    seen: set[int] = set()
    members: list[list[int]] = []
    unknown: list[str] = []
    duplicated: list[str] = []
    for group in groups:
        kept = []
        for raw in group:
            m = _id_text(raw)
            if m not in asked_text:
                unknown.append(m)
            elif asked_text[m] in seen:
                duplicated.append(m)
            else:
                seen.add(asked_text[m])
                kept.append(asked_text[m])
        members.append(kept)
    return MemberCheck(members, unknown, duplicated, [i for i in asked if i not in seen])
