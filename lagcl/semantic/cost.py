"""The cost model of the semantic layer: what its requests will cost, before any call is made (`DRY_RUN=1`).

Each LLM stage declares the requests it makes in its registry entry (tasks/stages.py `requests`: one of
`profile_requests`, `score_requests`, `group_requests` below, a function of the configuration and the data's
`Demand`); the planner adds up those of the stages a plan enables (`tasks.workload.planned_counts`) and prices them
here. The rules are the stages' own (`lagcl.augment.scoring_load`, the prompts of `lagcl.semantic.prompts`); the
dry run's tables are in flows/dry_run.py.

Given the number of requests per operation, each operation's prompt is rendered from the real
templates (conf/prompts) with a representative request of typical size, and

    input tokens  = calls x tokens(rendered prompt)
    output tokens = calls x expected reply length (below, capped at the request's max_tokens)
    USD           = input x in_price + output x out_price (llm.prices, per 1M tokens; x0.5 for scoring
                    through a Batch API; 0 for local backends)

The scoring operations (eq. 2-3, most of the bill) are priced from the workload itself (`ScoringLoad`:
the candidate-sample size of every cold-start user) for the prompt style chosen (`llm.prompt_style`):

    calls         = per sample, ceil(candidates / augment.items_per_call) chunks, packed
                    floor(compact_items_per_call / items_per_call) to a call in the compact style
    input tokens  = calls x (tokens of the prompt without candidates) + candidates x (tokens per candidate),
                    both measured on prompts rendered with one and with a full call of candidates
    prompt cache  = the stable prefix (instructions + user profile) is cached when it is at least the
                    model's minimum (`llm.cache_min_tokens`): per sample, the first min(calls,
                    engine.max_concurrency) calls write it (they are in flight together), the others read it

Token counts use the documented rough rule of 4 characters per token (`estimate_tokens`), or the
`count_tokens` callable given (e.g. a tokenizer's `lambda s: len(tok(s).input_ids)`). Repairs and
retries are not included: they add a few percent when replies are mostly valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from lagcl.config import Config, EngineConfig, LLMConfig
from lagcl.llm.accounting import estimate_tokens, find_in_table, find_price, price_usd
from lagcl.llm.types import LLMRequest
from lagcl.semantic.base import Group, Profile, ProfileRequest, ScoreRequest
from lagcl.semantic.prompts import Prompts

# the semantic layer's operations, in the order of an estimate's table (which stage makes each is the registry's
# word: tasks/stages.py `requests`, passed in as `stage_of`)
OPERATIONS = ("profile_user", "profile_item", "score_pos", "score_neg", "partition_user", "partition_item",
              "similarity_user", "similarity_item")
LOCAL_ENGINES = ("vllm", "transformers")
BATCH_ENGINES = ("anthropic", "openai")  # Message Batches / Batch API: half price for the scoring operations
SCORE_OPS = ("score_pos", "score_neg")
PAPER_TOKENS_PER_RATING = 45  # a rating with its one-line reason (the paper's reply, Figure 15)
COMPACT_TOKENS_PER_RATING = 8  # `"1234": 7.5, ` (quotes, id, colon, score, comma: ~8 BPE tokens)
REPLY_OVERHEAD_TOKENS = 20  # the reply's opening and closing JSON

# The paper's Table 1: users, items, interactions (for projections to the paper's datasets)
PAPER_DATASETS = {"ML-1M": (6_040, 3_952, 1_000_209), "Amazon-book": (11_000, 9_332, 120_464),
                  "Yelp": (11_091, 11_010, 166_620), "Steam": (23_310, 5_237, 316_190)}


@dataclass
class EstimateRow:
    stage: str
    operation: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    candidates: int = 0  # scored candidates (scoring operations)


@dataclass
class Estimate:
    model: str
    rows: list[EstimateRow] = field(default_factory=list)
    priced: bool = True
    style: str = "paper"
    prompt_cache: bool = False
    batch_api: bool = False
    cold_users: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. why the prompt cache does not apply

    @property
    def total_usd(self) -> float:
        return sum(r.cost_usd for r in self.rows)

    def stage_usd(self, stage: str) -> float:
        return sum(r.cost_usd for r in self.rows if r.stage == stage)

    @property
    def scoring(self) -> list[EstimateRow]:
        return [r for r in self.rows if r.operation in SCORE_OPS]

    @property
    def usd_per_cold_user(self) -> float | None:
        return self.total_usd / self.cold_users if self.cold_users else None

    def tokens_per_candidate(self) -> tuple[float, float] | None:
        """(input, output) tokens per scored candidate over the scoring operations."""
        n = sum(r.candidates for r in self.scoring)
        if not n:
            return None
        return sum(r.input_tokens for r in self.scoring) / n, sum(r.output_tokens for r in self.scoring) / n

    def variant(self) -> str:
        return (f"{self.style} prompts, prompt cache {'on' if self.prompt_cache else 'off'}, "
                f"batch API {'on' if self.batch_api else 'off'}")

    def table(self) -> str:
        head = (f"{'stage':<9} {'operation':<16} {'calls':>9} {'input tok':>13} {'cache read':>12} "
                f"{'output tok':>12} {'USD':>10}")
        lines = [f"LLM cost estimate for model {self.model} ({self.variant()})" + ("" if self.priced else
                 " (no price in llm.prices: USD shown as 0)"), head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.stage:<9} {r.operation:<16} {r.calls:>9,} {r.input_tokens:>13,} "
                         f"{r.cache_read_tokens:>12,} {r.output_tokens:>12,} {r.cost_usd:>10.2f}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<26} {sum(r.calls for r in self.rows):>9,} "
                     f"{sum(r.input_tokens for r in self.rows):>13,} "
                     f"{sum(r.cache_read_tokens for r in self.rows):>12,} "
                     f"{sum(r.output_tokens for r in self.rows):>12,} {self.total_usd:>10.2f}")
        per_user, per_cand = self.usd_per_cold_user, self.tokens_per_candidate()
        if per_user is not None:
            lines.append(f"USD per cold-start user: {per_user:.4f} ({self.cold_users:,} cold-start users)")
        if per_cand is not None:
            lines.append(f"tokens per scored candidate: {per_cand[0]:.1f} input + {per_cand[1]:.1f} output")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ScoringLoad:
    """The scoring workload (eq. 2-3): candidates in each cold-start user's sample (the like and the dislike
    samples have the same size: all candidates, or augment.n_candidates)."""

    sample_sizes: tuple[int, ...]

    @property
    def cold_users(self) -> int:
        return len(self.sample_sizes)

    def calls_per_sample(self, items_per_call: int, chunks_per_call: int = 1) -> list[int]:
        return [math.ceil(math.ceil(n / items_per_call) / chunks_per_call) for n in self.sample_sizes if n > 0]


def chunks_per_call(llm: LLMConfig, items_per_call: int) -> int:
    """How many of the augment stage's chunks share one call (the compact style packs them)."""
    return max(1, llm.compact_items_per_call // items_per_call) if llm.prompt_style == "compact" else 1


def expected_output_tokens(operation: str, items_per_call: int, group_batch: int, target_group_size: int,
                           style: str = "paper") -> int:
    """Typical reply lengths: a profile is <= 100 + 200 words; a rating with its one-line reason about 45
    tokens (compact style: an `"id": score` entry, about 8); a partition lists every member id (~8 tokens)
    plus a name and reason per group."""
    if operation.startswith("profile"):
        return 400
    if operation.startswith("score"):
        per = COMPACT_TOKENS_PER_RATING if style == "compact" else PAPER_TOKENS_PER_RATING
        return per * items_per_call + REPLY_OVERHEAD_TOKENS
    if operation.startswith("partition"):
        return 8 * group_batch + 80 * max(1, group_batch // target_group_size)
    return 80


def sample_requests(domain: str, engine: EngineConfig, items_per_call: int = 32, group_batch: int = 100,
                    target_group_size: int = 20, history: int = 30, llm: LLMConfig | None = None
                    ) -> dict[str, LLMRequest]:
    """One representative request per operation, rendered from the real templates with typical sizes:
    titles of ~40 characters, profiles of ~100 + ~150 words; scoring in `llm.prompt_style`."""
    llm = llm or LLMConfig()
    p = Prompts(domain, max_tokens=engine.max_tokens, temperature=engine.temperature, style=llm.prompt_style,
                summary_words=llm.compact_summary_words)
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


def _tokens(req: LLMRequest, count_tokens: Callable[[str], int]) -> int:
    return count_tokens(req.system + "".join(text for _, text in req.messages))


def estimate(counts: Mapping[str, int], engine: EngineConfig, llm: LLMConfig, domain: str = "item", *,
             items_per_call: int = 32, group_batch: int = 100, target_group_size: int = 20, history: int = 30,
             load: ScoringLoad | None = None, samples: Mapping[str, LLMRequest] | None = None,
             count_tokens: Callable[[str], int] = estimate_tokens, stage_of: Mapping[str, str] | None = None,
             out: Callable[[str], None] | None = print) -> Estimate:
    """Calls, tokens and USD per stage and operation for `counts` (operation -> number of requests;
    operations: profile_user, profile_item, score_pos, score_neg, partition_user, partition_item,
    similarity_user, similarity_item), in `llm.prompt_style`, with the prompt cache (`llm.prompt_cache`) and
    the Batch API (`engine.batch_api`) as configured. With `load`, the scoring calls, candidates and cache
    reads come from the cold-start users' samples (and override counts' score_pos / score_neg); without it,
    counts' scoring calls are taken as full calls of `items_per_call` candidates, none reading the cache.
    `stage_of`: operation -> the stage that makes it (the rows' stage; `Workload.stages`, from the registry).
    Makes no call; prints the table through `out` (None: silent)."""
    unknown = sorted(set(counts) - set(OPERATIONS))
    if unknown:
        raise ValueError(f"unknown operations {unknown}; known: {sorted(OPERATIONS)}")
    stage_of = stage_of or {}
    local = engine.name in LOCAL_ENGINES
    price = (0.0, 0.0, 0.0, 0.0) if local else find_price(llm.prices, engine.model)
    compact = llm.prompt_style == "compact"
    per_call_chunks = chunks_per_call(llm, items_per_call)
    score_items = items_per_call * per_call_chunks  # candidates in a full scoring call
    rendered = dict(sample_requests(domain, engine, score_items, group_batch, target_group_size, history, llm))
    rendered.update(samples or {})
    batch = engine.batch_api and engine.name in BATCH_ENGINES
    # anthropic caches what cache_control marks (llm.prompt_cache); openai caches prefixes by itself, and
    # llm.prompt_cache=false in an estimate then means "assume no cache hits"
    caching = not local and llm.prompt_cache
    report = Estimate(engine.model, priced=price is not None, style=llm.prompt_style, prompt_cache=caching,
                      batch_api=batch, cold_users=load.cold_users if load else 0)
    counts = dict(counts)
    calls_by_sample: list[int] | None = None
    if load is not None:
        calls_by_sample = load.calls_per_sample(items_per_call, per_call_chunks)
        for op in SCORE_OPS:
            if op in counts:
                counts[op] = sum(calls_by_sample)
    min_tokens = find_in_table(llm.cache_min_tokens, engine.model) if caching else None
    for operation in sorted(counts, key=OPERATIONS.index):
        calls = int(counts[operation])
        if calls <= 0:
            continue
        req = rendered[operation]
        tin = _tokens(req, count_tokens)
        tout = min(req.max_tokens, expected_output_tokens(operation, score_items, group_batch, target_group_size,
                                                          llm.prompt_style))
        row = EstimateRow(stage_of.get(operation, ""), operation, calls, calls * tin, calls * tout, 0.0)
        if operation in SCORE_OPS:
            n_items = sum(load.sample_sizes) if load is not None else calls * score_items
            row.candidates = n_items
            # tokens of the call without candidates, and per candidate, from the real template
            one = rendered_with(domain, engine, llm, operation, 1)
            per_item = (tin - _tokens(one, count_tokens)) / max(1, score_items - 1)
            fixed = _tokens(one, count_tokens) - per_item
            row.input_tokens = round(calls * fixed + n_items * per_item)
            per_out = COMPACT_TOKENS_PER_RATING if compact else PAPER_TOKENS_PER_RATING
            row.output_tokens = min(calls * req.max_tokens, calls * REPLY_OVERHEAD_TOKENS + n_items * per_out)
            prefix = count_tokens(req.system + req.messages[0][1][:req.cache_prefix_chars])
            if caching and req.cache_prefix_chars:
                if min_tokens is None or prefix < min_tokens:
                    report.notes.append(f"{operation}: the stable prefix (instructions + user profile) is {prefix} "
                                        f"tokens, below the {min_tokens or '(unknown)'}-token minimum "
                                        f"{engine.model} caches: no prompt cache"
                                        + ("" if min_tokens else " (add llm.cache_min_tokens for this model)"))
                else:
                    per_sample = calls_by_sample or [1] * calls
                    writes = sum(min(c, engine.max_concurrency) for c in per_sample)
                    row.cache_write_tokens = writes * prefix if engine.name == "anthropic" else 0
                    row.cache_read_tokens = (sum(per_sample) - writes) * prefix
        if price is not None:
            row.cost_usd = price_usd(price, row.input_tokens, row.output_tokens,
                                     batch and operation in SCORE_OPS, row.cache_read_tokens, row.cache_write_tokens)
        report.rows.append(row)
    if out is not None:
        out(report.table())
    return report


def rendered_with(domain: str, engine: EngineConfig, llm: LLMConfig, operation: str, n_items: int) -> LLMRequest:
    """The representative scoring request with `n_items` candidates."""
    return sample_requests(domain, engine, n_items, llm=llm)[operation]


def variants(counts: Mapping[str, int], engine: EngineConfig, llm: LLMConfig, domain: str = "item",
             **kw) -> list[Estimate]:
    """The same workload for each prompt style, with and without the prompt cache and the Batch API."""
    out = []
    for style in ("paper", "compact"):
        for cache in (False, True):
            for batch in (False, True):
                e = replace_engine(engine, batch_api=batch)
                lm = llm.model_copy(update={"prompt_style": style, "prompt_cache": cache})
                out.append(estimate(counts, e, lm, domain, out=None, **kw))
    return out


def replace_engine(engine: EngineConfig, **update) -> EngineConfig:
    return engine.model_copy(update=update)


def projected_counts(n_users: int, n_items: int, cold_share: float, cfg: Config) -> tuple[dict[str, int], ScoringLoad]:
    """Counts and scoring load for a dataset of `n_users` x `n_items`, with `cold_share` of its users cold-start
    (below augment.cold_threshold training positives, so each has at most that many items seen): one profile
    per user and item, a sample of min(n_candidates, n_items - cold_threshold) candidates per cold user and
    polarity, partitions and similarities as in `group_requests` (both kinds)."""
    cold = round(n_users * cold_share)
    size = max(0, min(cfg.augment.n_candidates, n_items - cfg.augment.cold_threshold))
    load = ScoringLoad(tuple([size] * cold))
    demand = Demand(n_users, n_items, load)
    counts = {**profile_requests(cfg, demand), **score_requests(cfg, demand, packed=False),
              **group_requests(cfg, demand, kinds=("user", "item"))}
    return counts, load


@dataclass
class Demand:
    """What the LLM stages' request counts depend on besides the configuration: the dataset's users and items and
    the scoring load of its cold-start users (or a function giving it, called the first time a stage asks:
    a plan without the augment stage never works it out)."""

    n_users: int
    n_items: int
    scoring: ScoringLoad | Callable[[], ScoringLoad]

    @property
    def load(self) -> ScoringLoad:
        if not isinstance(self.scoring, ScoringLoad):
            self.scoring = self.scoring()
        return self.scoring


def profile_requests(cfg: Config, demand: Demand) -> dict[str, int]:
    """The profiles stage: one profile request per user and item (eq. 1)."""
    return {"profile_user": demand.n_users, "profile_item": demand.n_items}


def score_requests(cfg: Config, demand: Demand, packed: bool = True) -> dict[str, int]:
    """The augment stage: per cold-start user, ceil(sample / items_per_call) like and as many dislike requests
    (eq. 2-3; packed to compact_items_per_call in the compact style; `packed=False`: one chunk a call)."""
    ipc = cfg.augment.items_per_call
    calls = sum(demand.load.calls_per_sample(ipc, chunks_per_call(cfg.llm, ipc) if packed else 1))
    return {"score_pos": calls, "score_neg": calls}


def group_requests(cfg: Config, demand: Demand, kinds: Sequence[str] | None = None) -> dict[str, int]:
    """The groups stage: ceil(n / batch_size) partitions per kind (eq. 5) and at most `candidate_pairs_k`
    similarity requests per group (eq. 6, an upper bound: mutual candidate pairs are asked once), for the kinds
    the engine groups (`kinds`, default `groups.engine_kinds`: a kind read from groups.<kind>_file asks nothing)."""
    g = cfg.groups
    kinds = g.engine_kinds if kinds is None else kinds
    counts: dict[str, int] = {}
    for kind, n in (("user", demand.n_users), ("item", demand.n_items)):
        if kind not in kinds:
            continue
        counts[f"partition_{kind}"] = math.ceil(n / g.batch_size)
        counts[f"similarity_{kind}"] = math.ceil(n / g.target_group_size) * g.candidate_pairs_k
    return counts


def operation_counts(by_stage: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Stage -> requests per operation, added up per operation (each operation belongs to one stage)."""
    return {op: n for ops in by_stage.values() for op, n in ops.items()}


@dataclass(frozen=True)
class Workload:
    """What the LLM stages of a planned run will ask, from prepare's finished tables: each stage's requests per
    operation (`requests`, as its registry entry declares them), the scoring load, the request sizes `estimate`
    takes, and the dataset's users."""

    requests: dict[str, dict[str, int]]
    load: ScoringLoad
    sizes: dict[str, int]
    n_users: int

    @property
    def counts(self) -> dict[str, int]:
        """Requests per operation, over the stages."""
        return operation_counts(self.requests)

    @property
    def stages(self) -> dict[str, str]:
        """Operation -> the stage that makes it."""
        return {op: stage for stage, ops in self.requests.items() for op in ops}

    def estimate(self, cfg: Config, out: Callable[[str], None] | None = print) -> Estimate:
        """The planned run's estimate (`estimate`), its table printed through `out` (None: silent)."""
        return estimate(self.counts, cfg.engine, cfg.llm, cfg.data.domain, load=self.load, out=out,
                        stage_of=self.stages, **self.sizes)
