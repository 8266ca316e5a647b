"""The four semantic operations of docs/design.md behind one interface.

An engine answers, in batches:
- profile:    eq. 1, a profile (summarization + reasoning) for each user or item context;
- score:      eq. 2-3, a like (polarity "pos") or dislike ("neg") score in [0, 10] for each
              candidate item of a user, several items per request;
- partition:  eq. 5, groups for a batch of profiles (every id assigned exactly once);
- similarity: eq. 6, a similarity in [0, 1] for each pair of groups.

Two implementations: the LLM engine (the paper's prompts through an LLM client) and the embedding
engine (offline, CPU; an approximation, and says so in `approximate`). Stages talk only to this
interface, so switching engines is a config change (`conf/engine/<name>.yaml`).

Besides the four operations an engine has three capabilities, which `EngineDefaults` gives every engine
as no-ops; the embedding engine, which works on the profiles' embeddings, overrides them:
- prime:          embed up front every text the coming calls' profiles need (identical floats in fresh and
                  resumed runs);
- profile_vector: the vector a profile is grouped by (eq. 6 candidate pairs), or None: the caller embeds it;
- index_profiles: learn the member profiles that similarity (eq. 6) forms group centroids from.

Requests name users and items by their internal ids (contiguous, re-assigned by every prepare) and may carry
a `label` beside each: the dataset's own id, which is what an LLM prompt shows and a reply names. Raw ids do
not move when new data adds items, so an unchanged user's prompts stay byte-identical across reruns and come
from the response cache (issue 14); replies are mapped back to internal ids against the request's labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

Kind = Literal["user", "item"]
Polarity = Literal["pos", "neg"]

# ProfileRequest.attributes keys that `lagcl.profiles` fills from the rating history (genre counts of the
# liked / disliked items) and from the item metadata; engines read them by name.
LIKED_GENRES = "liked genres"
DISLIKED_GENRES = "disliked genres"
GENRES = "genres"
RATING_COUNTS = "ratings"  # an item's training rating counts ("12 in training, 75% positive")


@dataclass(frozen=True)
class ProfileRequest:
    """What the engine knows of one user or item. `attributes` are metadata (age, genres, year...);
    `liked`/`disliked` are titles (or short texts) of rated items, newest first, for users only."""

    kind: Kind
    id: int
    title: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    liked: tuple[str, ...] = ()
    disliked: tuple[str, ...] = ()
    label: str = ""  # the dataset's own id, shown in prompts ("": the internal id)


@dataclass(frozen=True)
class Profile:
    kind: Kind
    id: int
    summarization: str
    reasoning: str
    failed: str | None = None  # reason, when the LLM reply could not be used after repair (texts empty)
    label: str = ""  # the dataset's own id, shown in partition prompts ("": the internal id)
    # what the text was composed from, as JSON-serialisable data (the embedding engine's profiles; None from an
    # LLM): later stages read an embedding profile's parts from here instead of parsing its prose back
    facts: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ScoreRequest:
    user: int
    user_profile: str
    polarity: Polarity
    items: tuple[tuple[int, str], ...]  # (item id, item profile text)
    user_label: str = ""  # the dataset's own user id, shown in prompts ("": the internal id)
    item_labels: tuple[str, ...] = ()  # the dataset's own item ids, aligned with `items` (empty: internal ids)
    user_facts: Mapping[str, Any] | None = None  # Profile.facts of the user profile
    item_facts: tuple[Mapping[str, Any] | None, ...] = ()  # Profile.facts aligned with `items` (empty: none)

    def labels(self) -> dict[int, str]:
        """Item id -> the id its prompt shows."""
        if not self.item_labels:
            return {i: str(i) for i, _ in self.items}
        return {i: label for (i, _), label in zip(self.items, self.item_labels)}


def shown_id(id_: int, label: str) -> str:
    """The id a prompt shows: the dataset's own where known, else the internal one."""
    return label or str(id_)


@dataclass(frozen=True)
class ScoreResult:
    user: int
    polarity: Polarity
    scores: dict[int, float]  # item id -> score in [0, 10]; only ids from the request
    failed: str | None = None  # reason, when the reply could not be used after repair


@dataclass(frozen=True)
class Group:
    kind: Kind
    name: str
    characteristics: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class PartitionResult:
    groups: tuple[Group, ...]
    unassigned: tuple[int, ...] = ()  # ids the engine did not place (the caller makes them singletons)
    failed: str | None = None


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    failed: int = 0


@runtime_checkable
class SemanticEngine(Protocol):
    name: str
    model: str
    approximate: bool  # True for the embedding engine: artifacts label it as an approximation

    def profile(self, requests: Sequence[ProfileRequest]) -> list[Profile]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]: ...

    def partition(self, kind: Kind, profiles: Sequence[Profile], target_group_size: int) -> PartitionResult: ...

    def similarity(self, pairs: Sequence[tuple[Group, Group]]) -> list[float]: ...

    def usage(self) -> Usage: ...

    def prime(self, profiles: Sequence[Profile]) -> None: ...

    def profile_vector(self, profile: Profile) -> np.ndarray | None: ...

    def index_profiles(self, profiles: Sequence[Profile]) -> None: ...


class EngineDefaults:
    """The capabilities of an engine that has nothing to prepare: no priming, no grouping vector of its own
    (the caller embeds profiles itself), nothing to learn from member profiles (its similarity reads the
    groups it is given)."""

    def prime(self, profiles: Sequence[Profile]) -> None:
        return None

    def profile_vector(self, profile: Profile) -> np.ndarray | None:
        return None

    def index_profiles(self, profiles: Sequence[Profile]) -> None:
        return None
