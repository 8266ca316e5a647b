"""Fan the per-request semantic operations out over an executor (a Dask cluster, `pipeline.runner=dask`).

`profile` and `score` are lists of independent requests: each call is cut into contiguous parts, every
part runs on a worker through an engine built there from the same config (one per worker process,
reused across calls), and the answers come back in request order. `partition` and `similarity` carry
state between calls (the embedding engine learns profiles in `partition`), so they run on one engine
in the calling process.

The caller stays the only writer of its stage folder: workers only compute and call the LLM, through
the response cache under `cache_dir/llm` (SQLite WAL, safe for several processes; on a real cluster
`cache_dir` must be a filesystem every worker mounts).

Accounting: each part returns what its worker engine counted for it, and `usage()` is the sum plus the
local engine's. Budget (the stage's `Budget`, tasks/budget.py): what is left of its allowance is divided
between the parts in flight, so the run never pays more than the budget even though workers cannot see each
other's spend; each worker adds its answers' cost to the stage's spend ledger in the shared response cache.
A part that runs out raises BudgetExceededError after its answers are cached, like the local engine (this
engine's message counts every part), and a rerun with a larger budget goes on from the cache.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Executor
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from lagcl.config import Config
from lagcl.errors import BudgetExceededError
from lagcl.llm.accounting import Budget
from lagcl.semantic.base import (EngineDefaults, Group, Kind, PartitionResult, Profile, ProfileRequest, ScoreRequest,
                                 ScoreResult, SemanticEngine, Usage)

# per worker process: engines by config key, and the text set each embedding engine was primed with
_WORKER_ENGINES: dict[str, Any] = {}
_WORKER_PRIMED: dict[str, str] = {}


def _combine(a: Usage, b: Usage, sign: int) -> Usage:
    """a + sign * b field by field, in the richer of the two Usage types (an LLM engine's usage also counts
    HTTP calls, retries by reason, waits and estimated tokens: per-reason dicts add key by key)."""
    cls = type(a) if len(fields(type(a))) >= len(fields(type(b))) else type(b)
    out = {}
    for f in fields(cls):
        x, y = getattr(a, f.name, None), getattr(b, f.name, None)
        if isinstance(x, dict) or isinstance(y, dict):
            x, y = x or {}, y or {}
            merged = {k: x.get(k, 0) + sign * y.get(k, 0) for k in sorted(set(x) | set(y))}
            out[f.name] = {k: v for k, v in merged.items() if v}
        else:
            out[f.name] = (x if x is not None else 0) + sign * (y if y is not None else 0)
    return cls(**out)


def _add(a: Usage, b: Usage) -> Usage:
    return _combine(a, b, 1)


def _sub(a: Usage, b: Usage) -> Usage:
    return _combine(a, b, -1)


def _worker_engine(cfg_json: str, cache_dir: str) -> tuple[str, SemanticEngine]:
    from lagcl.semantic import make_engine

    key = hashlib.sha256(f"{cfg_json}\0{cache_dir}".encode()).hexdigest()
    if key not in _WORKER_ENGINES:
        _WORKER_ENGINES[key] = make_engine(Config.model_validate(json.loads(cfg_json)), Path(cache_dir))
    return key, _WORKER_ENGINES[key]


def run_part(cfg_json: str, cache_dir: str, method: str, requests: list, prime: tuple[str, list[Profile]] | None,
             allowance_usd: float | None, ledger: str | None = None) -> tuple[list | None, Usage, Exception | None]:
    """One part on a worker: (answers in request order, what the worker's engine counted for them, the error
    that stopped it): what was paid reaches the caller's accounting even when the part fails."""
    key, engine = _worker_engine(cfg_json, cache_dir)
    if prime is not None and _WORKER_PRIMED.get(key) != prime[0]:
        engine.prime(prime[1])  # same batches as the local run: identical floats (EmbeddingEngine.prime)
        _WORKER_PRIMED[key] = prime[0]
    accounting = getattr(getattr(engine, "client", None), "accounting", None)
    if accounting is not None:
        accounting.budget_usd = None if allowance_usd is None else accounting.spent_usd + allowance_usd
        accounting.budget = Budget(run_usd=accounting.budget_usd, ledger=ledger)
    before = engine.usage()
    try:
        answers = getattr(engine, method)(requests)
    except Exception as exc:  # noqa: BLE001 - returned with the usage, re-raised by the caller
        return None, _sub(engine.usage(), before), exc
    return answers, _sub(engine.usage(), before), None


class DistributedEngine(EngineDefaults):
    """A SemanticEngine whose `profile` and `score` run in `parts` pieces on `executor`'s workers."""

    def __init__(self, cfg: Config, cache_dir: Path | str, executor: Executor, parts: int,
                 local: SemanticEngine | None = None, budget: Budget | None = None) -> None:
        from lagcl.semantic import make_engine

        self._cfg_json = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        self._cache_dir = str(Path(cache_dir).resolve())
        self._executor = executor
        self.parts = max(1, parts)
        self._local = local if local is not None else make_engine(cfg, Path(cache_dir), budget)
        self.name, self.model, self.approximate = self._local.name, self._local.model, self._local.approximate
        self._budget = budget if budget is not None else Budget(run_usd=cfg.llm.run_budget_usd)
        self._remote = Usage()
        self._prime: tuple[str, list[Profile]] | None = None

    def prime(self, profiles: Sequence[Profile]) -> None:
        """Remembered and sent with every part: each worker primes once with the same set."""
        profiles = list(profiles)
        key = "\0".join(f"{p.kind}\0{p.id}\0{p.summarization}\0{json.dumps(p.facts, sort_keys=True)}" for p in profiles)
        self._prime = (hashlib.sha256(key.encode()).hexdigest(), profiles)

    def _fan_out(self, method: str, requests: Sequence) -> list:
        requests = list(requests)
        if not requests:
            return []
        n = min(self.parts, len(requests))
        bounds = [round(k * len(requests) / n) for k in range(n + 1)]
        allowance = None
        if self._budget.allowance_usd is not None:
            allowance = max(0.0, self._budget.allowance_usd - self.usage().cost_usd) / n
        prime = self._prime if self._prime is not None and method == "score" else None
        futures = [self._executor.submit(run_part, self._cfg_json, self._cache_dir, method,
                                         requests[bounds[k]:bounds[k + 1]], prime, allowance, self._budget.ledger)
                   for k in range(n)]
        answers: list = []
        error: BaseException | None = None
        for fut in futures:  # wait for every part: answers of the others are cached before any error surfaces
            try:
                part, used, part_error = fut.result()
            except BaseException as exc:  # noqa: BLE001 - a lost worker: re-raised below, after the other parts
                error = error or exc
                continue
            self._remote = _add(self._remote, used)
            if part_error is not None:
                error = error or part_error
            else:
                answers.extend(part)
        if isinstance(error, BudgetExceededError):  # a part's own words count only that part's spend
            raise BudgetExceededError(self._budget.reached(self.usage().cost_usd)) from None
        if error is not None:
            raise error
        return answers

    def profile(self, requests: Sequence[ProfileRequest]) -> list[Profile]:
        return self._fan_out("profile", requests)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return self._fan_out("score", requests)

    def partition(self, kind: Kind, profiles: Sequence[Profile], target_group_size: int) -> PartitionResult:
        return self._local.partition(kind, profiles, target_group_size)

    def similarity(self, pairs: Sequence[tuple[Group, Group]]) -> list[float]:
        return self._local.similarity(pairs)

    def usage(self) -> Usage:
        return _add(self._local.usage(), self._remote)
