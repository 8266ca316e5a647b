"""What a run will cost, before any call is made (`DRY_RUN=1` / `lagcl estimate`).

Given the number of requests per operation, each operation's prompt is rendered from the real
templates (conf/prompts) with a representative request of typical size, and

    input tokens  = calls x tokens(rendered prompt)
    output tokens = calls x expected reply length (below, capped at the request's max_tokens)
    USD           = input x in_price + output x out_price (llm.prices, per 1M tokens; x0.5 for scoring
                    through the Anthropic Message Batches API; 0 for local backends)

Token counts use the documented rough rule of 4 characters per token (`estimate_tokens`), or the
`count_tokens` callable given (e.g. a tokenizer's `lambda s: len(tok(s).input_ids)`). Repairs and
retries are not included: they add a few percent when replies are mostly valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from lagcl.config import EngineConfig, LLMConfig
from lagcl.llm.accounting import BATCH_DISCOUNT, estimate_tokens, find_price
from lagcl.llm.types import LLMRequest

STAGE_OF = {"profile_user": "profiles", "profile_item": "profiles", "score_pos": "augment", "score_neg": "augment",
            "partition_user": "groups", "partition_item": "groups", "similarity_user": "groups",
            "similarity_item": "groups"}
LOCAL_ENGINES = ("vllm", "transformers")


@dataclass
class EstimateRow:
    stage: str
    operation: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass
class Estimate:
    model: str
    rows: list[EstimateRow] = field(default_factory=list)
    priced: bool = True

    @property
    def total_usd(self) -> float:
        return sum(r.cost_usd for r in self.rows)

    def table(self) -> str:
        head = f"{'stage':<9} {'operation':<16} {'calls':>9} {'input tok':>13} {'output tok':>12} {'USD':>10}"
        lines = [f"LLM cost estimate for model {self.model}" + ("" if self.priced else
                 " (no price in llm.prices: USD shown as 0)"), head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.stage:<9} {r.operation:<16} {r.calls:>9,} {r.input_tokens:>13,} {r.output_tokens:>12,} "
                         f"{r.cost_usd:>10.2f}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<26} {sum(r.calls for r in self.rows):>9,} "
                     f"{sum(r.input_tokens for r in self.rows):>13,} {sum(r.output_tokens for r in self.rows):>12,} "
                     f"{self.total_usd:>10.2f}")
        return "\n".join(lines)


def expected_output_tokens(operation: str, items_per_call: int, group_batch: int, target_group_size: int) -> int:
    """Typical reply lengths: a profile is <= 100 + 200 words; a rating with its one-line reason about 45
    tokens; a partition lists every member id (~8 tokens) plus a name and reason per group."""
    if operation.startswith("profile"):
        return 400
    if operation.startswith("score"):
        return 45 * items_per_call + 20
    if operation.startswith("partition"):
        return 8 * group_batch + 80 * max(1, group_batch // target_group_size)
    return 80


def sample_requests(domain: str, engine: EngineConfig, items_per_call: int = 32, group_batch: int = 100,
                    target_group_size: int = 20, history: int = 30) -> dict[str, LLMRequest]:
    """One representative request per operation, rendered from the real templates with typical sizes:
    titles of ~40 characters, profiles of ~100 + ~150 words."""
    from lagcl.semantic.base import Group, Profile, ProfileRequest, ScoreRequest
    from lagcl.semantic.prompts import Prompts

    p = Prompts(domain, max_tokens=engine.max_tokens, temperature=engine.temperature)
    title = "An Example Title Of Typical Length (1995)"
    summary = " ".join(["word"] * 100)
    reasoning = " ".join(["word"] * 150)
    liked = tuple(title for _ in range(history * 2 // 3))
    disliked = tuple(title for _ in range(history - len(liked)))
    user = ProfileRequest("user", 123, attributes={"age": "25-34", "gender": "F", "occupation": "engineer"},
                          liked=liked, disliked=disliked)
    item = ProfileRequest("item", 456, title=title, attributes={"genres": "Comedy|Drama|Romance", "year": "1995"})
    items = tuple((1000 + i, summary) for i in range(items_per_call))
    profiles = [Profile("user", 10_000 + i, summary, reasoning) for i in range(group_batch)]
    group = Group("user", "An example group name", summary, tuple(range(target_group_size)))
    out = {"profile_user": p.profile(user), "profile_item": p.profile(item),
           "score_pos": p.score(ScoreRequest(123, summary, "pos", items)),
           "score_neg": p.score(ScoreRequest(123, summary, "neg", items)),
           "partition_user": p.partition("user", profiles, target_group_size),
           "similarity_user": p.similarity(group, group)}
    out["partition_item"] = out["partition_user"]
    out["similarity_item"] = out["similarity_user"]
    return out


def estimate(counts: Mapping[str, int], engine: EngineConfig, llm: LLMConfig, domain: str = "item", *,
             items_per_call: int = 32, group_batch: int = 100, target_group_size: int = 20, history: int = 30,
             samples: Mapping[str, LLMRequest] | None = None,
             count_tokens: Callable[[str], int] = estimate_tokens,
             out: Callable[[str], None] | None = print) -> Estimate:
    """Calls, tokens and USD per stage and operation for `counts` (operation -> number of requests;
    operations: profile_user, profile_item, score_pos, score_neg, partition_user, partition_item,
    similarity_user, similarity_item). Makes no call; prints the table through `out` (None: silent)."""
    unknown = sorted(set(counts) - set(STAGE_OF))
    if unknown:
        raise ValueError(f"unknown operations {unknown}; known: {sorted(STAGE_OF)}")
    local = engine.name in LOCAL_ENGINES
    price = (0.0, 0.0) if local else find_price(llm.prices, engine.model)
    rendered = dict(sample_requests(domain, engine, items_per_call, group_batch, target_group_size, history))
    rendered.update(samples or {})
    report = Estimate(engine.model, priced=price is not None)
    for operation in sorted(counts, key=lambda op: (list(STAGE_OF).index(op))):
        calls = int(counts[operation])
        if calls <= 0:
            continue
        req = rendered[operation]
        tin = count_tokens(req.system + "".join(text for _, text in req.messages))
        tout = min(req.max_tokens, expected_output_tokens(operation, items_per_call, group_batch, target_group_size))
        usd = 0.0
        if price is not None:
            usd = calls * (tin * price[0] + tout * price[1]) / 1e6
            if engine.batch_api and engine.name == "anthropic" and operation.startswith("score"):
                usd *= BATCH_DISCOUNT
        report.rows.append(EstimateRow(STAGE_OF[operation], operation, calls, calls * tin, calls * tout, usd))
    if out is not None:
        out(report.table())
    return report


def planned_counts(interactions, n_users: int, n_items: int, cfg) -> dict[str, int]:
    """Requests each LLM operation will make on this data under `cfg` (a lagcl.config.Config), from
    the same rules the stages use: one profile request per user and item (eq. 1); per cold-start
    user, ceil(sample / items_per_call) like and dislike requests (eq. 2-3); ceil(n / batch_size)
    partitions per kind (eq. 5); at most `candidate_pairs_k` similarity requests per group (eq. 6,
    an upper bound: mutual candidate pairs are asked once)."""
    import math

    import polars as pl

    from lagcl.augment import cold_users

    on = {s: v for s, v in cfg.pipeline.stages.items()}
    counts: dict[str, int] = {}
    if on.get("profiles", True):
        counts["profile_user"], counts["profile_item"] = n_users, n_items
    if on.get("augment", True) and cfg.pipeline.ablation != "no-data":
        cold = set(cold_users(interactions, cfg.augment.cold_threshold))
        seen = (interactions.filter(pl.col("split") == "train").group_by("user").len()
                .filter(pl.col("user").is_in(list(cold))))
        seen_by_user = dict(seen.iter_rows())
        calls = sum(math.ceil(min(cfg.augment.n_candidates, n_items - seen_by_user.get(u, 0))
                              / cfg.augment.items_per_call) for u in cold)
        counts["score_pos"] = counts["score_neg"] = calls
    if on.get("groups", True):
        g = cfg.groups
        for kind, n in (("user", n_users), ("item", n_items)):
            counts[f"partition_{kind}"] = math.ceil(n / g.batch_size)
            counts[f"similarity_{kind}"] = math.ceil(n / g.target_group_size) * g.candidate_pairs_k
    return counts
