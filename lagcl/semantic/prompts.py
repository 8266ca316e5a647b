"""The paper's prompts (Appendix A, Figures 9-19; templates in conf/prompts/*.j2) and the parsing of
the replies into checked values.

Two rules keep data from acting as instructions and keep the LLM from inventing data:
- every value from a dataset enters a prompt as a JSON-encoded value (the `json` filter), so a title
  saying "ignore previous instructions" stays a quoted string inside a JSON document;
- every reply is parsed into a pydantic schema and checked against the request: ids that were not in
  the request are rejected, scores must lie in [0, 10] and similarities in [0, 1]. A problem is
  returned as text, which the engine sends back once as a repair request.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, create_model, field_validator

from lagcl.config import CONF_DIR
from lagcl.llm.types import LLMRequest
from lagcl.semantic.base import Group, Kind, Polarity, Profile, ProfileRequest, ScoreRequest, shown_id
from lagcl.semantic.replies import check_members, check_scores

PROMPT_DIR = CONF_DIR / "prompts"
PromptStyle = Literal["paper", "compact"]


@dataclass(frozen=True)
class DomainWords:
    noun: str
    plural: str
    audience: str

    @property
    def id_key(self) -> str:
        return f"{self.noun}_id"


# `data.domain` -> the words the prompts use (the paper's prompts are written for movies)
DOMAINS = {
    "movie": DomainWords("movie", "movies", "viewers"),
    "business": DomainWords("business", "businesses", "customers"),
    "book": DomainWords("book", "books", "readers"),
    "game": DomainWords("game", "games", "players"),
    "item": DomainWords("item", "items", "users"),
}


def domain_words(domain: str) -> DomainWords:
    if domain in DOMAINS:
        return DOMAINS[domain]
    noun = re.sub(r"[^a-z]+", "_", domain.lower()).strip("_") or "item"
    return DomainWords(noun, noun + "s", "users")


@dataclass(frozen=True)
class Entity:
    """Who a partition / similarity prompt is about: users, or the domain's items."""
    singular: str
    plural: str
    id_key: str
    about: str
    similar: str


def entity(kind: Kind, d: DomainWords) -> Entity:
    if kind == "user":
        return Entity("user", "users", "user_id", f"a user's {d.noun} preferences", "preferences and tastes")
    return Entity(d.noun, d.plural, d.id_key, f"which {d.audience} would enjoy the {d.noun}",
                  "appeal and audiences")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _json_compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class Prompts:
    """Renders conf/prompts/<name>.j2 (blocks `system` and `user`) into LLM requests."""

    def __init__(self, domain: str = "item", prompt_dir: str | Path | None = None, max_tokens: int = 1024,
                 temperature: float = 0.0, style: PromptStyle = "paper", summary_words: int = 20,
                 schema_max_chars: int | None = None, schema_pin_ids: bool = False) -> None:
        if style not in ("paper", "compact"):
            raise ValueError(f"llm.prompt_style must be 'paper' or 'compact', got {style!r}")
        self.style = style
        self.summary_words = summary_words
        self.schema_max_chars = schema_max_chars
        self.schema_pin_ids = schema_pin_ids
        self.d = domain_words(domain)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(prompt_dir or PROMPT_DIR)),
                                      undefined=jinja2.StrictUndefined, autoescape=False,
                                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        self.env.filters["json"] = _json
        self.env.filters["json_compact"] = _json_compact

    def render(self, name: str, **ctx: Any) -> tuple[str, str]:
        template = self.env.get_template(f"{name}.j2")
        context = template.new_context({"d": self.d, **ctx})
        system = "".join(template.blocks["system"](context)).strip()
        user = "".join(template.blocks["user"](context)).strip()
        return system, user

    def _request(self, name: str, operation: str, schema: dict[str, Any], max_tokens: int | None = None,
                 ids: Sequence[str] | None = None, **ctx: Any) -> LLMRequest:
        system, user = self.render(name, **ctx)
        if self.schema_pin_ids and ids is not None:
            schema = pinned_ids(schema, list(ids))
        if self.schema_max_chars is not None:
            schema = bounded_strings(schema, self.schema_max_chars)
        return LLMRequest.single(system, user, max_tokens=max_tokens or self.max_tokens,
                                 temperature=self.temperature, json_schema=schema, operation=operation)

    # eq. 1 -----------------------------------------------------------------------------------
    def profile(self, req: ProfileRequest) -> LLMRequest:
        if req.kind == "user":
            query = {"user_id": shown_id(req.id, req.label), "user_information": dict(req.attributes),
                     f"liked_{self.d.plural}": list(req.liked), f"disliked_{self.d.plural}": list(req.disliked)}
            return self._request("user_profile", "profile_user", profile_schema("user_id"), query=query)
        query = {self.d.id_key: shown_id(req.id, req.label), "title": req.title, **dict(req.attributes)}
        return self._request("item_profile", "profile_item", profile_schema(self.d.id_key), query=query)

    # eq. 2-3 ---------------------------------------------------------------------------------
    def score(self, req: ScoreRequest) -> LLMRequest:
        """The paper's scoring prompt (Figures 15-16: full item profiles, a reason per rating), or the compact
        one (`style="compact"`: one-line item cards, scores only). Either way the user turn starts with the
        user profile, and `cache_prefix_chars` marks where that stable part ends (prompt caching)."""
        key = self.d.id_key
        user_profile = {"user_id": shown_id(req.user, req.user_label), "profile": req.user_profile}
        labels = req.labels()
        if self.style == "compact":
            # output budget: about 8 tokens per `"id": score` entry, with room to spare
            max_tokens = max(self.max_tokens, 16 * len(req.items) + 50)
            request = self._request("score_compact", f"score_{req.polarity}", compact_score_schema(req.polarity),
                                    max_tokens=max_tokens, ids=[labels[i] for i, _ in req.items],
                                    polarity=req.polarity,
                                    score_key=_score_key(req.polarity), user_profile=user_profile,
                                    item_cards=[{key: labels[i], "card": item_card(text, self.summary_words)}
                                                for i, text in req.items])
            profile_json = _json_compact(user_profile)
        else:
            # output budget grows with the number of items (about 60 tokens per rating with its reason)
            max_tokens = max(self.max_tokens, 80 * len(req.items) + 50)
            request = self._request(f"score_{req.polarity}", f"score_{req.polarity}",
                                    score_schema(key, req.polarity), max_tokens=max_tokens,
                                    ids=[labels[i] for i, _ in req.items], user_profile=user_profile,
                                    item_profiles=[{key: labels[i], "profile": text} for i, text in req.items])
            profile_json = _json(user_profile)
        user = request.messages[0][1]
        at = user.find(profile_json)  # a custom template without the profile first: no cache breakpoint
        cut = at + len(profile_json) + 1 if at >= 0 else 0
        return dataclasses.replace(request, cache_prefix_chars=cut)

    # eq. 5 -----------------------------------------------------------------------------------
    def partition(self, kind: Kind, profiles: Sequence[Profile], target_group_size: int) -> LLMRequest:
        e = entity(kind, self.d)
        rows = [{e.id_key: shown_id(p.id, p.label), "summarization": p.summarization, "reasoning": p.reasoning} for p in profiles]
        max_tokens = max(self.max_tokens, 12 * len(profiles) + 120 * (len(profiles) // max(1, target_group_size) + 1))
        return self._request("group_partition", f"partition_{kind}", partition_schema(), max_tokens=max_tokens,
                             ids=[r[e.id_key] for r in rows], e=e, n=len(rows),
                             target_group_size=target_group_size, profiles=rows)

    # eq. 6 -----------------------------------------------------------------------------------
    def similarity(self, a: Group, b: Group) -> LLMRequest:
        e = entity(a.kind, self.d)
        groups = {f"group_{i}": {"name": g.name, "key_characteristics": g.characteristics, "size": len(g.members)}
                  for i, g in ((1, a), (2, b))}
        return self._request("group_similarity", f"similarity_{a.kind}", similarity_schema(), e=e, groups=groups)

    # eq. 13-14 (used by the rerank stage to build its training and inference texts) ------------
    def rerank(self, user_id: int, user_profile: str, candidates: Sequence[tuple[int, str]],
               liked: Sequence[tuple[int, str]] = (), disliked: Sequence[tuple[int, str]] = (),
               item: tuple[int, str] | None = None) -> tuple[str, str]:
        def rows(pairs: Sequence[tuple[int, str]]) -> list[dict[str, str]]:
            return [{"id": str(i), "summarization": t, "signal": ""} for i, t in pairs]

        return self.render("rerank_cot", user_id=str(user_id), user_profile=user_profile,
                           candidates=rows(candidates), original_ranking=[str(i) for i, _ in candidates],
                           liked=rows(liked), disliked=rows(disliked),
                           item=None if item is None else {"id": str(item[0]), "summarization": item[1]})

    def repair(self, request: LLMRequest, bad_reply: str, error: str) -> LLMRequest:
        _, user = self.render("repair", error=error)
        return request.followup(bad_reply, user)


def _score_key(polarity: Polarity) -> str:
    return "like_score" if polarity == "pos" else "dislike_score"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def item_card(profile: str, words: int) -> str:
    """The compact style's one-line summary of an item profile: its first sentence, at most `words` words
    (cut ones end with '...')."""
    first = _SENTENCE_END.split(profile.strip(), maxsplit=1)[0]
    tokens = first.split()
    return " ".join(tokens[:words]) + ("..." if len(tokens) > words else "")


# reply models: what the parser validates, and (through reply_schema) the JSON schema each request
# sends for guided decoding ------------------------------------------------------------------------
OPTIONAL = {"x-optional": True}  # a field the prompt mentions but a reply may leave out
# a field the parser never reads: asked for as text, never a reason to reject a reply
Unread = Annotated[Any, WithJsonSchema({"type": "string"})]
Score = Annotated[float, Field(ge=0, le=10)]  # eq. 2-3


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class ProfileReply(_Loose):
    summarization: str
    reasoning: str = ""


def profile_reply(id_key: str) -> type[BaseModel]:
    """Eq. 1's reply as the prompt asks for it: the id first, then ProfileReply's two texts."""
    return create_model("ProfileReplyWithId", __base__=_Loose, **{id_key: (str, ...)},
                        **{name: (f.annotation, f) for name, f in ProfileReply.model_fields.items()})


class RatingReply(_Loose):
    """One rating after its id and score keys are normalised (`movie_id`/`item_id`/`id`,
    `like_score`/`dislike_score`/`score`); scores outside [0, 10] (eq. 2-3) fail validation."""

    id: str
    score: float = Field(ge=0, le=10, allow_inf_nan=False)

    @field_validator("score", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v


def score_reply(id_key: str, polarity: Polarity) -> type[BaseModel]:
    """Eq. 2-3's reply in the paper's style: {"ratings": [{"<id_key>": ..., "like_score": ..., "reasoning": ...}]}
    (`dislike_score` for eq. 3); parse_scores also takes RatingReply's other key names."""
    rating = create_model("Rating", __base__=_Loose, **{id_key: (str, ...), _score_key(polarity): (Score, ...)},
                          reasoning=(Unread, Field(None, json_schema_extra=OPTIONAL)))
    return create_model("ScoreReply", __base__=_Loose, ratings=(list[rating], ...))


def compact_score_reply(polarity: Polarity) -> type[BaseModel]:
    """The compact reply: {"like_scores": {"<id>": score, ...}} (dislike_scores for eq. 3)."""
    return create_model("CompactScoreReply", __base__=_Loose, **{_score_key(polarity) + "s": (dict[str, Score], ...)})


class GroupReply(_Loose):
    group_id: Unread = Field(None, json_schema_extra=OPTIONAL)
    group_name: str = ""
    members: list[str]
    reasoning: str = Field("", json_schema_extra=OPTIONAL)


class PartitionReply(_Loose):
    groups: list[GroupReply]


class SimilarityReply(_Loose):
    # the range is asked of the model; parse_similarity checks it itself, to name the problem out_of_range
    similarity_score: float = Field(json_schema_extra={"minimum": 0, "maximum": 1})
    reasoning: Unread = Field(None, json_schema_extra=OPTIONAL)


# the order the keys are sent in (readable: the type first, bounds last); the cache key sorts them anyway
_SCHEMA_KEY_ORDER = {k: i for i, k in enumerate(("type", "required", "properties", "items", "additionalProperties",
                                                 "minimum", "maximum"))}


def reply_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent with a request (vLLM guided decoding, OpenAI `json_schema` response format):
    `model.model_json_schema()` with definitions inlined, titles and defaults dropped, and every field
    required but those marked OPTIONAL. It is part of the response cache key, so it stays byte-stable."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})

    def clean(node: Any) -> Any:
        if isinstance(node, list):
            return [clean(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return clean(defs[node["$ref"].rsplit("/", 1)[-1]])
        out = {k: clean(v) for k, v in node.items() if k not in ("title", "default", "properties", "required")}
        if "properties" in node:
            props = {name: clean(v) for name, v in node["properties"].items()}
            out["required"] = [name for name, v in props.items() if not v.pop("x-optional", False)]
            out["properties"] = props
        return dict(sorted(out.items(), key=lambda kv: _SCHEMA_KEY_ORDER.get(kv[0], len(_SCHEMA_KEY_ORDER))))

    return clean(raw)


# every request carries its schema: built once per (operation, keys), a fresh copy for each request
@functools.lru_cache(maxsize=None)
def _schema_json(operation: str, *keys: str) -> str:
    model = {"profile": profile_reply, "score": score_reply, "compact_score": compact_score_reply,
             "partition": lambda: PartitionReply, "similarity": lambda: SimilarityReply}[operation](*keys)
    return json.dumps(reply_schema(model))


def bounded_strings(schema: Any, max_chars: int) -> Any:
    """`schema` with `maxLength: max_chars` on every string (llm.schema_max_chars): a copy, the input untouched."""
    if isinstance(schema, list):
        return [bounded_strings(v, max_chars) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded_strings(v, max_chars) for k, v in schema.items()}
    if out.get("type") == "string":
        out["maxLength"] = max_chars
    return out


def pinned_ids(schema: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """`schema` with the request's own ids written in (llm.schema_pin_ids): a rating list holds exactly one entry
    per id asked (`enum`, `minItems` = `maxItems`), the compact reply's object has exactly those keys, a group's
    members are ids asked. Constrained decoding then cannot invent an id or run a list on; a repeated id is
    still possible and still rejected by the parser. A copy, the input untouched."""
    out = json.loads(json.dumps(schema))
    props = out["properties"]
    if "ratings" in props:
        ratings = props["ratings"]
        rating = ratings["items"]
        id_key = rating["required"][0]
        rating["properties"][id_key] = {**rating["properties"][id_key], "enum": ids}
        ratings.update(minItems=len(ids), maxItems=len(ids))
    elif "groups" in props:
        members = props["groups"]["items"]["properties"]["members"]
        members["items"] = {**members["items"], "enum": ids}
        members["minItems"] = 1
    else:  # the compact reply: {"<score_key>s": {id: score}}
        [(key, scores)] = props.items()
        value = scores.pop("additionalProperties")
        props[key] = {**scores, "required": ids, "properties": {i: value for i in ids}, "additionalProperties": False}
    return out


def profile_schema(id_key: str) -> dict[str, Any]:
    return json.loads(_schema_json("profile", id_key))


def score_schema(id_key: str, polarity: Polarity) -> dict[str, Any]:
    return json.loads(_schema_json("score", id_key, polarity))


def compact_score_schema(polarity: Polarity) -> dict[str, Any]:
    return json.loads(_schema_json("compact_score", polarity))


def partition_schema() -> dict[str, Any]:
    return json.loads(_schema_json("partition"))


def similarity_schema() -> dict[str, Any]:
    return json.loads(_schema_json("similarity"))


# parsing -------------------------------------------------------------------------------------
class ReplyError(ValueError):
    """A reply that cannot be used as it is; the message is what the repair request tells the model,
    `reason` a short name for counting (not_json, duplicate_key, wrong_structure, empty, out_of_range)."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class Problem(str):
    """The problems of a partly usable reply: the text for the repair request, with `reasons`, the short
    names of its kinds (unknown_id, out_of_range, duplicate_id, missing_id) for counting."""

    reasons: tuple[str, ...] = ()

    @staticmethod
    def of(parts: list[tuple[str, str]]) -> "Problem | None":
        """(reason, text) pairs -> one Problem, or None when there is nothing wrong."""
        if not parts:
            return None
        problem = Problem("; ".join(text for _, text in parts))
        problem.reasons = tuple(dict.fromkeys(reason for reason, _ in parts))
        return problem


class _DuplicateKeys:
    """object_pairs_hook for json: json.loads keeps the last of two equal keys silently; this notes every
    key given twice with different values in one object (`{"like_score": 2, "like_score": 9}`)."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out and out[key] != value:
                self.found.append(key)
            out[key] = value
        return out


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


def extract_json(text: str) -> Any:
    """The first JSON value in a reply, tolerating code fences and chatter around it."""
    stripped = _FENCE.sub("", text.strip())
    duplicates = _DuplicateKeys()
    decoder = json.JSONDecoder(object_pairs_hook=duplicates)
    starts = [i for i, ch in enumerate(stripped) if ch in "{["]
    if not starts:
        raise ReplyError("the reply contains no JSON object", "not_json")
    first_error = ""
    for start in starts[:20]:
        try:
            value, _ = decoder.raw_decode(stripped, start)
        except json.JSONDecodeError as exc:
            first_error = first_error or f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            duplicates.found.clear()
            continue
        if duplicates.found:  # contradictory: which of the two values was meant cannot be known
            keys = ", ".join(json.dumps(k) for k in dict.fromkeys(duplicates.found))
            raise ReplyError(f"these keys appear twice in one JSON object with different values: {keys}; "
                             f"give each key once", "duplicate_key")
        return value
    raise ReplyError(first_error + ("; the reply looks cut off" if not stripped.rstrip().endswith(("}", "]")) else ""),
                     "not_json")


def _validate(model: type[BaseModel], value: Any) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:5])
        raise ReplyError(f"the JSON does not follow the required structure ({problems})", "wrong_structure") from None


def parse_profile(text: str) -> tuple[str, str]:
    value = extract_json(text)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = value[0]
    reply = _validate(ProfileReply, value)
    if not reply.summarization.strip():
        raise ReplyError('"summarization" is empty', "empty")
    return reply.summarization.strip(), reply.reasoning.strip()


def _first(d: dict[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _rating_score(raw_score: Any) -> Any:
    """A rating's score as the reply model reads it (a number, or a number in a string), or the raw value
    when it is none: check_scores then rejects it, and the repair request quotes it as it was."""
    try:
        return RatingReply.model_validate({"id": "", "score": raw_score}).score
    except ValidationError:
        return raw_score


def parse_scores(text: str, id_key: str, polarity: Polarity, wanted: Sequence[int],
                 labels: Mapping[int, str] | None = None) -> tuple[dict[int, float], Problem | None]:
    """Scores for the requested ids (named in the prompt by `labels`, where given), and the problems found (None
    when the reply is complete and clean); the problems name ids as the prompt did.
    The rules are lagcl.semantic.replies.check_scores: invalid entries (unknown id, score outside [0, 10],
    not a number) are dropped, never kept; an id rated twice makes the reply invalid (repaired); two
    different scores for one id contradict each other and neither is kept, the same score twice is kept."""
    value = extract_json(text)
    score_key = _score_key(polarity)
    if isinstance(value, list):
        value = {"ratings": value}
    if isinstance(value, dict) and isinstance(value.get(score_key + "s"), dict):  # the compact reply
        value = {"ratings": [{id_key: k, score_key: v} for k, v in value[score_key + "s"].items()]}
    if not isinstance(value, dict) or not isinstance(value.get("ratings"), list):
        raise ReplyError(f'the JSON must be an object with a "ratings" list (paper style) or a "{score_key}s" '
                         f'object of id -> score (compact style)', "wrong_structure")
    ratings: list[tuple[Any, Any] | str] = [
        (_first(e, (id_key, "item_id", "id")), _rating_score(_first(e, (score_key, "score", "like_score",
                                                                         "dislike_score"))))
        if isinstance(e, dict) else repr(e)[:40] for e in value["ratings"]]
    check = check_scores(wanted, ratings, labels)
    shown = _shown(labels)
    problems: list[tuple[str, str]] = []
    if check.unknown:
        problems.append(("unknown_id", f"these {id_key}s were not in the request and were rejected: "
                                       f"{', '.join(check.unknown[:20])}"))
    if check.bad:
        bad = [score if item is None else f"{item}: {score!r}" for item, score in check.bad]
        problems.append(("out_of_range", f"these scores are not numbers in [0, 10]: {', '.join(bad[:20])}"))
    if check.twice:
        text = (f"these {id_key}s were rated more than once (rate each exactly once): "
                f"{', '.join(map(shown, check.twice[:20]))}")
        if check.contradicted:
            kept_none = ", ".join(map(shown, sorted(check.contradicted)[:20]))
            text += f" (with different scores, so no score is kept for {kept_none})"
        problems.append(("duplicate_id", text))
    if check.missing:
        problems.append(("missing_id", f"these {id_key}s got no valid score: "
                                       f"{', '.join(map(shown, check.missing[:50]))}"))
    return check.scores, Problem.of(problems)


def parse_partition(text: str, wanted: Sequence[int], kind: Kind, labels: Mapping[int, str] | None = None
                    ) -> tuple[list[Group], list[int], Problem | None]:
    """Groups with only requested ids (named in the prompt by `labels`, where given), each id in its first
    group; the ids left out; the problems (the rules are lagcl.semantic.replies.check_members)."""
    value = extract_json(text)
    if isinstance(value, list):
        value = {"groups": value}
    reply = _validate(PartitionReply, value)
    check = check_members(wanted, (g.members for g in reply.groups), labels)
    shown = _shown(labels)
    groups = [Group(kind, g.group_name.strip() or f"group_{n + 1}", g.reasoning.strip(), tuple(members))
              for n, (g, members) in enumerate(zip(reply.groups, check.members)) if members]
    problems: list[tuple[str, str]] = []
    if check.unknown:
        problems.append(("unknown_id", f"these ids were not in the input and were rejected: "
                                       f"{', '.join(check.unknown[:20])}"))
    if check.duplicated:
        problems.append(("duplicate_id", f"these ids were assigned to more than one group: "
                                         f"{', '.join(check.duplicated[:20])}"))
    if check.missing:
        problems.append(("missing_id", f"these ids were not assigned to any group: "
                                       f"{', '.join(map(shown, check.missing[:50]))}"))
    return groups, check.missing, Problem.of(problems)


def _shown(labels: Mapping[int, str] | None) -> Callable[[int], str]:
    """How a problem names an id: as the prompt showed it."""
    return (lambda i: shown_id(i, labels.get(i, ""))) if labels is not None else str


def parse_similarity(text: str) -> float:
    value = extract_json(text)
    reply = _validate(SimilarityReply, value)
    if not math.isfinite(reply.similarity_score) or not 0 <= reply.similarity_score <= 1:
        raise ReplyError(f"similarity_score must be a number in [0, 1], got {reply.similarity_score:g}",
                         "out_of_range")
    return reply.similarity_score
