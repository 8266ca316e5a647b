"""The LLM engine: the four semantic operations through the paper's prompts and one LLM client.

profile (eq. 1), score (eq. 2-3), partition (eq. 5) and similarity (eq. 6) each render their prompt
(lagcl.semantic.prompts), send the whole batch through `LLMClient.generate` (cache, limits, retries,
accounting), and parse the replies. A reply that cannot be used gets exactly one repair request (the
model sees its reply and the problem); if that fails too, the result carries the reason in `failed`.
Nothing is silently dropped and no id outside the request is ever returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from lagcl.config import EngineConfig, LLMConfig
from lagcl.llm import Budget, LLMClient, LLMRequest, make_client
from lagcl.llm.backends.base import Backend
from lagcl.semantic.base import (EngineDefaults, Group, Kind, PartitionResult, Profile, ProfileRequest, ScoreRequest,
                                 ScoreResult, Usage, shown_id)
from lagcl.semantic.prompts import (Problem, Prompts, ReplyError, domain_words, parse_partition, parse_profile,
                                    parse_scores, parse_similarity)

log = logging.getLogger("lagcl.semantic")
V = TypeVar("V")

# A parser returns (value, problem): a value that may be partial, and None or the text of the problem.
Parser = Callable[[int, str], tuple[Any, str | None]]


@dataclass(frozen=True)
class LLMUsage(Usage):
    """Usage plus what the provider calls cost beyond the answers (stage manifests write it as `usage`):
    HTTP calls, retries by reason (429, 5xx, timeout, connection, invalid_reply, other, repair), seconds
    waited before retries, unusable replies by reason, and how many of the tokens are estimates (replies
    without usage)."""

    http_calls: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    retry_wait_s: float = 0.0
    invalid_replies: dict[str, int] = field(default_factory=dict)
    no_reply: dict[str, int] = field(default_factory=dict)  # requests without any reply, by reason (`failed` is
    # the semantic results recorded as failed after repair, these among them)
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    cache_read_tokens: int = 0   # of input_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of input_tokens: written to it
    score_pairs_reused: int = 0  # eq. 2-3 (user, item) pairs scored from earlier validated replies
    score_pairs_sent: int = 0  # pairs put into score requests (answered by the model or the response cache)


class LLMEngine(EngineDefaults):
    approximate = False

    def __init__(self, engine: EngineConfig, llm: LLMConfig, domain: str = "item",
                 cache_dir: str | Path = "cache/llm", backend: Backend | None = None,
                 prompt_dir: str | Path | None = None, budget: Budget | None = None) -> None:
        self.name = engine.name
        self.model = engine.model
        self.domain = domain
        self.client: LLMClient = make_client(engine, llm, cache_dir, backend=backend, budget=budget)
        self.prompts = Prompts(domain, prompt_dir, max_tokens=engine.max_tokens, temperature=engine.temperature,
                               style=llm.prompt_style, summary_words=llm.compact_summary_words,
                               schema_max_chars=llm.schema_max_chars, schema_pin_ids=llm.schema_pin_ids)
        # compact style: consecutive score requests of one user and polarity share a call, up to this many items
        self.items_per_call = llm.compact_items_per_call if llm.prompt_style == "compact" else 0
        self.repair = llm.repair
        self.reuse_pair_scores = llm.reuse_pair_scores
        self._pair_prefix: dict[str, list[Any]] = {}  # polarity -> the parts of a pair key every pair shares
        self.pairs_reused = 0  # score pairs answered from earlier validated replies (pair_scores)
        self.pairs_sent = 0  # score pairs put into requests (answered by the model or the response cache)
        self.failed = 0  # semantic results recorded as failed (after repair)

    # the one place replies are checked and repaired -----------------------------------------------
    def _ask(self, requests: list[LLMRequest], parse: Parser, merge: Callable[[Any, Any], Any] | None = None
             ) -> list[tuple[Any, str | None]]:
        responses = self.client.generate_sync(requests)
        results: list[tuple[Any, str | None]] = []
        retry: list[int] = []
        for i, resp in enumerate(responses):
            if not resp.ok:  # no answer at all (transport): not cached, a rerun asks again
                results.append((None, f"no reply: {resp.error}"))
                continue
            results.append(_safe_parse(parse, i, resp.text, resp.finish_reason, requests[i].max_tokens))
            if results[-1][1] is not None:
                self._count_invalid(requests[i], results[-1][1])
                if self.repair:
                    retry.append(i)
        asked: dict[int, list[LLMRequest]] = {i: [requests[i]] for i in retry}
        if retry:
            repairs = [self.prompts.repair(requests[i], _clip(responses[i].text, requests[i].max_tokens),
                                           results[i][1] or "") for i in retry]
            for i, repair in zip(retry, repairs):
                asked[i].append(repair)
                self.client.accounting.record_retry(requests[i].operation, "repair")
            for i, resp in zip(retry, self.client.generate_sync(repairs)):
                first_value, first_problem = results[i]
                if not resp.ok:
                    results[i] = (first_value, f"{first_problem}; repair got no reply: {resp.error}")
                    continue
                value, problem = _safe_parse(parse, i, resp.text, resp.finish_reason, requests[i].max_tokens)
                if problem is not None:
                    self._count_invalid(requests[i], problem)
                if merge is not None and first_value is not None and value is not None:
                    value = merge(first_value, value)
                results[i] = (value if value is not None else first_value,
                              None if problem is None else _after_repair(problem))
        unusable: list[str] = []
        for i, (value, problem) in enumerate(results):
            if problem is not None:
                self.failed += 1
                log.warning("LLM reply recorded as failed: %s", problem[:300])
                unusable += [self.client.key(r) for r in asked.get(i, ())]
        # a reply still unusable after its repair is a failed request, and failed requests are not kept in
        # the response cache: the rerun that retries the failures asks the model again instead of rereading it
        self.client.cache.delete(unusable)
        return results

    def _count_invalid(self, request: LLMRequest, problem: str) -> None:
        self.client.accounting.record_invalid(request.operation, getattr(problem, "reasons", None) or ("other",))

    # eq. 1 -------------------------------------------------------------------------------------
    def profile(self, requests: Sequence[ProfileRequest]) -> list[Profile]:
        def parse(i: int, text: str) -> tuple[Any, str | None]:
            return parse_profile(text), None

        out = []
        for req, (value, problem) in zip(requests, self._ask([self.prompts.profile(r) for r in requests], parse)):
            if problem is None:
                out.append(Profile(req.kind, req.id, value[0], value[1]))
            else:
                out.append(Profile(req.kind, req.id, "", "", failed=problem))
        return out

    # eq. 2-3 -----------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """One ScoreResult per request. A call whose prompt is in the response cache is answered from there, as
        always. With `llm.reuse_pair_scores` the other requests take the score of every (user, item, polarity)
        pair whose prompt parts were already scored in a validated reply, and only the remaining pairs are asked,
        regrouped per user and polarity into requests of at most the largest request's size: a request changed in
        one item re-asks that item only, and one whose items are all known sends nothing. On a first run nothing
        is known and the regrouped requests are the requests themselves. Every validated pair is recorded
        (lagcl.llm.cache, table pair_scores); a failed reply never."""
        packs = pack_score_requests(requests, self.items_per_call)
        keys = [self.pair_keys(r) for r in requests]
        if self.reuse_pair_scores:
            calls = [self.client.key(self.prompts.score(_packed(requests, p))) for p in packs]
            in_cache = self.client.cache.get_many(calls)
            whole = [i for p, call in zip(packs, calls) if call in in_cache for i in p]
            rest = sorted(set(range(len(requests))) - set(whole))
            known = self.client.cache.pair_scores(k for i in rest for k in keys[i])
        else:
            whole, rest, known = list(range(len(requests))), [], {}
        regrouped, regrouped_keys = _regroup([requests[i] for i in rest], [keys[i] for i in rest], known)
        asked = [requests[i] for i in whole] + regrouped
        asked_keys = [keys[i] for i in whole] + regrouped_keys
        at = {i: n for n, i in enumerate(whole)}
        answers = self._score(asked, [[at[i] for i in p] for p in packs if p[0] in at]
                              + [[len(whole) + j for j in p] for p in pack_score_requests(regrouped, self.items_per_call)])
        self.client.cache.put_pair_scores(
            {k: answer.scores[item] for sub, answer, ks in zip(asked, answers, asked_keys) if answer.failed is None
             for (item, _), k in zip(sub.items, ks) if item in answer.scores})
        self.pairs_sent += sum(len(sub.items) for sub in asked)
        self.pairs_reused += sum(1 for i in rest for k in keys[i] if k in known)
        where = {k: n for n, ks in enumerate(regrouped_keys) for k in ks}
        out = [answers[at[i]] if i in at else None for i in range(len(requests))]
        for i in rest:
            r, scores, failed = requests[i], {}, None
            for (item, _), k in zip(r.items, keys[i]):
                if k in known:
                    scores[item] = known[k]
                    continue
                answer = answers[len(whole) + where[k]]
                failed = failed or answer.failed
                if item in answer.scores:
                    scores[item] = answer.scores[item]
            out[i] = ScoreResult(r.user, r.polarity, scores, failed=failed)
        return out  # type: ignore[return-value]

    def pair_keys(self, req: ScoreRequest) -> list[str]:
        """Per item of `req`, the digest of what the model sees of that (user, item, polarity) pair: backend,
        model and its answer-changing parameters, the prompt style and the template text, the temperature, the
        polarity, the user's shown id, profile and facts, and the item's shown id, profile and facts."""
        if req.polarity not in self._pair_prefix:
            name = "score_compact" if self.prompts.style == "compact" else f"score_{req.polarity}"
            template = self.prompts.env.loader.get_source(self.prompts.env, f"{name}.j2")[0]  # type: ignore[union-attr]
            backend = self.client.backend
            self._pair_prefix[req.polarity] = [
                backend.name, backend.model, backend.cache_params(), self.domain, self.prompts.style,
                self.prompts.summary_words if self.prompts.style == "compact" else None, template,
                self.prompts.temperature, req.polarity]
        head = [*self._pair_prefix[req.polarity], shown_id(req.user, req.user_label), req.user_profile, req.user_facts]
        labels = req.labels()
        facts = req.item_facts or (None,) * len(req.items)
        return [_digest([*head, labels[i], text, f]) for (i, text), f in zip(req.items, facts)]

    def _score(self, requests: Sequence[ScoreRequest], packs: list[list[int]]) -> list[ScoreResult]:
        """The requests as given, each pack (indices into `requests`, pack_score_requests) in one call."""
        id_key = domain_words(self.domain).id_key

        def merge(first: dict[int, float], repaired: dict[int, float]) -> dict[int, float]:
            return {**first, **repaired}  # the repaired reply wins; valid scores of the first are kept

        if not requests:
            return []
        packed = [_packed(requests, p) for p in packs]
        wanted = [[item for item, _ in req.items] for req in packed]

        def parse(i: int, text: str) -> tuple[Any, str | None]:
            return parse_scores(text, id_key, packed[i].polarity, wanted[i], packed[i].labels())

        out: list[ScoreResult | None] = [None] * len(requests)
        results = self._ask([self.prompts.score(r) for r in packed], parse, merge)
        for p, (scores, problem) in zip(packs, results):
            scores = dict(scores or {})
            for i in p:
                req = requests[i]
                own = {item: scores[item] for item, _ in req.items if item in scores}
                # a request that shared its call is answered when all its items are, unless the reply broke
                # another rule (unknown or repeated ids): then, as for a request alone, the reply is not trusted
                reasons = set(getattr(problem, "reasons", ()) or ("other",))
                ok = problem is None or (len(p) > 1 and len(own) == len(req.items) and reasons <= {"missing_id"})
                out[i] = ScoreResult(req.user, req.polarity, own, failed=None if ok else problem)
        return out  # type: ignore[return-value]

    # eq. 5 -------------------------------------------------------------------------------------
    def partition(self, kind: Kind, profiles: Sequence[Profile], target_group_size: int) -> PartitionResult:
        ids = [p.id for p in profiles]
        labels = {p.id: shown_id(p.id, p.label) for p in profiles}
        if not profiles:
            return PartitionResult(())

        def parse(i: int, text: str) -> tuple[Any, str | None]:
            groups, missing, problem = parse_partition(text, ids, kind, labels)
            return (groups, missing), problem

        [(value, problem)] = self._ask([self.prompts.partition(kind, profiles, target_group_size)], parse)
        if value is None or not value[0]:
            return PartitionResult((), tuple(ids), failed=problem or "no usable group")
        groups, missing = value
        # unassigned ids become singletons in the caller; the problem is logged and counted above
        return PartitionResult(tuple(groups), tuple(missing), failed=None)

    # eq. 6 -------------------------------------------------------------------------------------
    def similarity(self, pairs: Sequence[tuple[Group, Group]]) -> list[float]:
        """Similarity in [0, 1] per pair; NaN where the reply could not be used after repair (NaN is never
        above tau_sim, so such a pair is not merged, and `usage().failed` counts it)."""
        def parse(i: int, text: str) -> tuple[Any, str | None]:
            return parse_similarity(text), None

        results = self._ask([self.prompts.similarity(a, b) for a, b in pairs], parse)
        return [value if problem is None else math.nan for value, problem in results]

    # accounting --------------------------------------------------------------------------------
    def usage(self) -> LLMUsage:
        t = self.client.accounting.totals()
        return LLMUsage(requests=t.requests, cached=t.cached, input_tokens=t.input_tokens,
                        output_tokens=t.output_tokens, cost_usd=t.cost_usd, failed=self.failed,
                        http_calls=t.http_calls, retries=dict(sorted(t.retries.items())),
                        retry_wait_s=round(t.retry_wait_s, 3), invalid_replies=dict(sorted(t.invalid_replies.items())),
                        no_reply=dict(sorted(t.no_reply.items())),
                        estimated_input_tokens=t.estimated_input_tokens,
                        estimated_output_tokens=t.estimated_output_tokens,
                        cache_read_tokens=t.cache_read_tokens, cache_write_tokens=t.cache_write_tokens,
                        score_pairs_reused=self.pairs_reused, score_pairs_sent=self.pairs_sent)

    def accounting(self) -> dict[str, Any]:
        """Per-operation counts, tokens and spend of this run, plus everything ever paid through this cache:
        JSON-ready, for stage manifests."""
        return {"engine": self.name, "model": self.model, "by_operation": self.client.accounting.summary(),
                "spent_usd": self.client.accounting.spent_usd, "cache_total_usd": self.client.cache.total_cost(),
                "semantic_failures": self.failed}


def _packed(requests: Sequence[ScoreRequest], pack: list[int]) -> ScoreRequest:
    """The one request a pack of consecutive requests of one user, profile and polarity is sent as."""
    head = requests[pack[0]]
    return ScoreRequest(head.user, head.user_profile, head.polarity,
                        tuple(item for i in pack for item in requests[i].items), head.user_label,
                        tuple(label for i in pack for label in requests[i].labels().values()))


def _regroup(requests: Sequence[ScoreRequest], keys: Sequence[Sequence[str]], known: Mapping[str, float]
             ) -> tuple[list[ScoreRequest], list[list[str]]]:
    """The pairs of `requests` without a known score, as requests of one user, profile and polarity (in the order
    the requests list them) of at most the largest request's size; and the pair keys of each."""
    size = max((len(r.items) for r in requests), default=0)
    pending: dict[tuple, list[tuple[ScoreRequest, int, str]]] = {}
    seen: set[str] = set()
    for r, ks in zip(requests, keys):
        head = (r.user, r.user_profile, r.polarity, r.user_label,
                json.dumps(r.user_facts, sort_keys=True, default=str))
        for j, k in enumerate(ks):
            if k not in known and k not in seen:
                seen.add(k)
                pending.setdefault(head, []).append((r, j, k))
    asked: list[ScoreRequest] = []
    asked_keys: list[list[str]] = []
    for pairs in pending.values():
        for start in range(0, len(pairs), size):
            part = pairs[start:start + size]
            first = part[0][0]
            labelled = all(r.item_labels for r, _, _ in part)
            with_facts = all(r.item_facts for r, _, _ in part)
            asked.append(ScoreRequest(
                first.user, first.user_profile, first.polarity, tuple(r.items[j] for r, j, _ in part),
                first.user_label, tuple(r.item_labels[j] for r, j, _ in part) if labelled else (),
                first.user_facts, tuple(r.item_facts[j] for r, j, _ in part) if with_facts else ()))
            asked_keys.append([k for _, _, k in part])
    return asked, asked_keys


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def pack_score_requests(requests: Sequence[ScoreRequest], items_per_call: int) -> list[list[int]]:
    """Indices of `requests` grouped into calls: consecutive requests of one user, polarity and profile share a
    call while their items fit in `items_per_call` (0: each request is its own call, the paper's layout)."""
    packs: list[list[int]] = []
    size = 0
    for i, req in enumerate(requests):
        if packs and items_per_call:
            head = requests[packs[-1][0]]
            if ((head.user, head.polarity, head.user_profile) == (req.user, req.polarity, req.user_profile)
                    and size + len(req.items) <= items_per_call):
                packs[-1].append(i)
                size += len(req.items)
                continue
        packs.append([i])
        size = len(req.items)
    return packs


# A token is about 4 characters; a reply many times longer than the tokens asked for is not an answer to
# the request (a broken or hostile server): it is rejected before parsing, and the repair request quotes only
# its beginning, so a 10 MB reply costs neither parse time nor a 10 MB repair prompt.
MAX_CHARS_PER_TOKEN = 16
REPAIR_QUOTE_CHARS = 2000


def _too_long(text: str, max_tokens: int) -> Problem | None:
    if len(text) <= MAX_CHARS_PER_TOKEN * max_tokens:
        return None
    return Problem.of([("too_long", f"the reply is {len(text):,} characters long, far more than the {max_tokens} "
                                    f"tokens asked for; answer with the JSON object only")])


def _after_repair(problem: str) -> str:
    """The problem left after the repair, keeping its reasons (Problem.reasons) for the callers that read them."""
    out = Problem(f"after one repair attempt: {problem}")
    out.reasons = getattr(problem, "reasons", ())
    return out


def _clip(text: str, max_tokens: int) -> str:
    if _too_long(text, max_tokens) is None:
        return text
    return text[:REPAIR_QUOTE_CHARS] + f"... [{len(text) - REPAIR_QUOTE_CHARS:,} more characters cut]"


def _safe_parse(parse: Parser, i: int, text: str, finish_reason: str, max_tokens: int | None = None
                ) -> tuple[Any, str | None]:
    if max_tokens is not None and (problem := _too_long(text, max_tokens)) is not None:
        return None, problem
    try:
        return parse(i, text)
    except ReplyError as exc:
        text = str(exc)
        if finish_reason in ("length", "max_tokens"):
            text += " (the reply hit the max_tokens limit)"
        return None, Problem.of([(exc.reason, text)])
