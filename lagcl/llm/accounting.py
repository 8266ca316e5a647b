"""Token and cost accounting, and the budget that stops a run cleanly.

Cost of one answer = uncached input tokens * in_price + cache-read tokens * cache_read_price + cache-write
tokens * cache_write_price + output_tokens * out_price, prices in USD per million tokens from `llm.prices`
(conf/engine/<name>.yaml: [input, output] or [input, output, cache read, cache write]; with two values
cache tokens are priced as ordinary input), halved for the Batch APIs (Anthropic Message Batches, OpenAI Batch).
Cache hits cost nothing when they are read.

The budget (`Budget`): `llm.budget_usd` caps what the run's LLM stages cost together and
`llm.stage_budget_usd[stage]` what one stage costs, each counted over every attempt (docs/design.md 16): the
planner (tasks/budget.py) hands a stage's client what was paid before it started, read from the response
cache's spend ledger, and the client counts what it pays on top. Before a request is sent, its worst-case
cost (prompt chars/4 + max_tokens) is reserved, and a request that could take spend past a cap is not sent;
the client then raises BudgetExceededError after every answer so far is in the cache, so a rerun with a
larger budget continues where this one stopped (and counts what this one paid).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence, TypeVar

from lagcl.errors import LLMError
from lagcl.llm.types import Completion, LLMRequest

if TYPE_CHECKING:
    from lagcl.config import EngineConfig, LLMConfig

BATCH_DISCOUNT = 0.5  # Anthropic Message Batches API and OpenAI Batch API: half price
T = TypeVar("T")


def estimate_tokens(text: str) -> int:
    """The documented rough estimate: one token per four characters (English text, BPE tokenizers)."""
    return math.ceil(len(text) / 4)


Price = tuple[float, float, float, float]  # USD per 1M tokens: input, output, cache read, cache write


def full_price(values: Sequence[float]) -> Price:
    """[input, output] or [input, output, cache read, cache write] -> all four (two values: cache tokens cost
    what ordinary input tokens cost, i.e. no caching discount is assumed)."""
    if len(values) == 2:
        return (float(values[0]), float(values[1]), float(values[0]), float(values[0]))
    if len(values) == 4:
        return tuple(float(v) for v in values)  # type: ignore[return-value]
    raise LLMError(f"a price in llm.prices has 2 values (input, output) or 4 (input, output, cache read, "
                   f"cache write), USD per 1M tokens; got {list(values)}")


def find_in_table(table: Mapping[str, T], model: str) -> T | None:
    """Exact model name, else the longest table entry the model name starts with
    (so `claude-sonnet-4-5` finds `claude-sonnet-4-5-20250929`)."""
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None


def find_price(prices: Mapping[str, Sequence[float]], model: str) -> Price | None:
    """The model's four prices (see `full_price`), by exact name or longest prefix; None when not listed."""
    found = find_in_table(prices, model)
    return None if found is None else full_price(found)


def price_usd(price: Price, input_tokens: float, output_tokens: float, batch: bool = False,
              cache_read_tokens: float = 0, cache_write_tokens: float = 0) -> float:
    """USD for one answer (or a sum of answers): `input_tokens` counts every prompt token, of which
    `cache_read_tokens` and `cache_write_tokens` are priced at their own rates; x0.5 through a Batch API."""
    plain = input_tokens - cache_read_tokens - cache_write_tokens
    if plain < 0:
        raise LLMError(f"cache tokens ({cache_read_tokens} read + {cache_write_tokens} written) exceed the prompt's "
                       f"{input_tokens} input tokens")
    usd = (plain * price[0] + output_tokens * price[1] + cache_read_tokens * price[2]
           + cache_write_tokens * price[3]) / 1e6
    return usd * (BATCH_DISCOUNT if batch else 1.0)


def paid_price(engine: "EngineConfig", llm: "LLMConfig") -> Price | None:
    """The model's price when the engine bills per token (anthropic / openai with a non-zero price for
    `engine.model` in llm.prices), else None: the offline and local engines, and a server priced [0, 0]."""
    if engine.name not in ("anthropic", "openai"):
        return None
    price = find_price(llm.prices, engine.model)
    return price if price is not None and any(price) else None


@dataclass(frozen=True)
class Budget:
    """What one client may spend: `run_usd` (llm.budget_usd) over the whole run and `stage_usd`
    (llm.stage_budget_usd[stage]) over its stage, each less what was paid before this client started
    (`run_paid_usd`: every stage of the run, this one's earlier attempts included; `stage_paid_usd`: this
    stage's earlier attempts). `paid_by_stage` is for the message; `ledger` is the stage's key in the response
    cache's spend ledger, where every answer's cost is added as it is stored (None: not recorded)."""

    run_usd: float | None = None
    stage: str | None = None
    stage_usd: float | None = None
    run_paid_usd: float = 0.0
    stage_paid_usd: float = 0.0
    paid_by_stage: tuple[tuple[str, float], ...] = ()
    ledger: str | None = None

    @property
    def allowance_usd(self) -> float | None:
        """What this client may still pay: the tighter of the two caps, None without either."""
        left = [cap - paid for cap, paid in ((self.run_usd, self.run_paid_usd),
                                              (self.stage_usd, self.stage_paid_usd)) if cap is not None]
        return max(0.0, min(left)) if left else None

    def binding(self) -> str:
        """Which cap the allowance comes from: "run" or "stage"."""
        if self.stage_usd is None:
            return "run"
        if self.run_usd is None:
            return "stage"
        return "stage" if self.stage_usd - self.stage_paid_usd < self.run_usd - self.run_paid_usd else "run"

    def reached(self, spent_now: float) -> str:
        """The budget-reached message, `spent_now` being what this client paid: spent / budget, by stage, and
        what to do."""
        stages = dict(self.paid_by_stage)
        if self.stage is not None:
            stages[self.stage] = stages.get(self.stage, 0.0) + spent_now
        by_stage = ", ".join(f"{s} ${usd:.4f}" for s, usd in stages.items())
        if self.binding() == "stage":
            paid = self.stage_paid_usd + spent_now
            head = (f"LLM stage budget reached: stage {self.stage} has cost ${paid:.4f} of "
                    f"llm.stage_budget_usd.{self.stage}=${self.stage_usd:.4f}")
            setting = f"llm.stage_budget_usd.{self.stage}"
        else:
            paid = self.run_paid_usd + spent_now
            head = (f"LLM budget reached{f' in stage {self.stage}' if self.stage else ''}: the run has cost "
                    f"${paid:.4f} of llm.budget_usd=${self.run_usd:.4f}")
            setting = "llm.budget_usd"
        return (f"{head}{f' (every attempt counted: {by_stage})' if by_stage else ''}; the next request could pass "
                f"it, so no more are sent. Raise {setting} and rerun (e.g. {setting}={_suggest(paid)}): answered "
                f"requests are served from the cache and not paid again, and what was paid so far counts towards "
                f"the new budget")


def _suggest(paid: float) -> str:
    """A round budget above `paid` for the message (double, at least $1 more)."""
    return f"{max(paid * 2, paid + 1):.0f}"


@dataclass
class OpStats:
    requests: int = 0      # answered by the backend in this run (paid)
    cached: int = 0        # answered from the response cache
    attempts: int = 0      # backend calls including retries and repairs
    input_tokens: int = 0  # all prompt tokens, including those read from or written to the prompt cache
    output_tokens: int = 0
    cost_usd: float = 0.0
    cache_read_tokens: int = 0   # prompt tokens served from the provider's prompt cache (cheaper)
    cache_write_tokens: int = 0  # prompt tokens written to it (Anthropic: dearer than plain input)
    failed: int = 0        # no answer after retries (not cached; a rerun sends them again)
    no_reply: dict[str, int] = field(default_factory=dict)  # `failed` by reason (backends.base.NO_REPLY_REASONS)
    http_calls: int = 0    # calls that reached the provider (every attempt; batch submits, polls, fetches)
    # retries by reason: 429, 5xx, timeout, connection, invalid_reply (a 200 whose body cannot be read),
    # other (408/409), repair (a reply that could not be used, asked again once with its problems)
    retries: dict[str, int] = field(default_factory=dict)
    retry_wait_s: float = 0.0  # seconds slept before retries (backoff and Retry-After)
    # replies that could not be used, by reason (not_json, duplicate_id, unknown_id, ...): each is sent to repair
    invalid_replies: dict[str, int] = field(default_factory=dict)
    # tokens of answers whose server sent no usage: estimated (chars / 4) and included in input/output_tokens
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0


class Accounting:
    """This client's counts and spend. `budget`: a Budget, or a bare USD cap on what this client pays (None:
    no cap). `budget_usd` is the cap on `spent_usd` the client checks (the budget's allowance)."""

    def __init__(self, price: Sequence[float] | None, budget: Budget | float | None, model: str) -> None:
        self.budget = budget if isinstance(budget, Budget) else Budget(run_usd=budget)
        budget_usd = self.budget.allowance_usd
        if budget_usd is not None and price is None:
            raise LLMError(f"llm.budget_usd is set but llm.prices has no entry for model '{model}': add one, "
                           f"e.g. llm.prices.{model}=[3.0,15.0] (USD per 1M input, output tokens)")
        self.price = None if price is None else full_price(price)
        self.budget_usd = budget_usd
        self.model = model
        self.by_operation: dict[str, OpStats] = {}
        self._reserved = 0.0
        self._lock = threading.Lock()

    def _op(self, operation: str) -> OpStats:
        return self.by_operation.setdefault(operation or "other", OpStats())

    def cost(self, input_tokens: int, output_tokens: int, batch: bool = False, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        return 0.0 if self.price is None else price_usd(self.price, input_tokens, output_tokens, batch,
                                                        cache_read_tokens, cache_write_tokens)

    def worst_case_cost(self, request: LLMRequest, batch: bool = False) -> float:
        return self.cost(estimate_tokens(request.system + "".join(t for _, t in request.messages)),
                         request.max_tokens, batch)

    @property
    def spent_usd(self) -> float:
        return sum(s.cost_usd for s in self.by_operation.values())

    def try_reserve(self, usd: float) -> bool:
        """Reserve the worst-case cost of a request about to be sent; False when the budget forbids it."""
        with self._lock:
            if self.budget_usd is not None and self.spent_usd + self._reserved + usd > self.budget_usd:
                return False
            self._reserved += usd
            return True

    def release(self, usd: float) -> None:
        with self._lock:
            self._reserved = max(0.0, self._reserved - usd)

    def record_answer(self, operation: str, completion: Completion, attempts: int, batch: bool = False) -> float:
        usd = self.cost(completion.input_tokens, completion.output_tokens, batch, completion.cache_read_tokens,
                        completion.cache_write_tokens)
        with self._lock:
            s = self._op(operation)
            s.requests += 1
            s.attempts += attempts
            s.input_tokens += completion.input_tokens
            s.output_tokens += completion.output_tokens
            s.cache_read_tokens += completion.cache_read_tokens
            s.cache_write_tokens += completion.cache_write_tokens
            s.estimated_input_tokens += completion.input_tokens if completion.input_estimated else 0
            s.estimated_output_tokens += completion.output_tokens if completion.output_estimated else 0
            s.cost_usd += usd
        return usd

    def record_http_call(self, operation: str) -> None:
        with self._lock:
            self._op(operation).http_calls += 1

    def record_retry(self, operation: str, reason: str, wait_s: float = 0.0) -> None:
        with self._lock:
            s = self._op(operation)
            s.retries[reason] = s.retries.get(reason, 0) + 1
            s.retry_wait_s += wait_s

    def record_invalid(self, operation: str, reasons: tuple[str, ...] | list[str]) -> None:
        """One reply that could not be used as given; each of its reasons is counted once."""
        with self._lock:
            s = self._op(operation)
            for reason in dict.fromkeys(reasons):
                s.invalid_replies[reason] = s.invalid_replies.get(reason, 0) + 1

    def record_cached(self, operation: str, n: int = 1) -> None:
        with self._lock:
            self._op(operation).cached += n

    def record_failure(self, operation: str, attempts: int, reason: str) -> None:
        with self._lock:
            s = self._op(operation)
            s.failed += 1
            s.no_reply[reason] = s.no_reply.get(reason, 0) + 1
            s.attempts += attempts

    def totals(self) -> OpStats:
        total = OpStats()
        with self._lock:
            stats = [asdict(s) for s in self.by_operation.values()]
        for s in stats:
            for k, v in s.items():
                if isinstance(v, dict):
                    setattr(total, k, dict(Counter(getattr(total, k)) + Counter(v)))
                else:
                    setattr(total, k, getattr(total, k) + v)
        return total

    def summary(self) -> dict[str, dict[str, float]]:
        """Per operation and in total, for stage manifests (JSON-ready)."""
        with self._lock:
            out = {op: asdict(s) for op, s in sorted(self.by_operation.items())}
        out["total"] = asdict(self.totals())
        return out
