"""The one configuration loader.

A run's configuration is `conf/defaults.yaml`, the dataset file `conf/data/<data>.yaml` under
`data`, the engine file `conf/engine/<engine>.yaml` and the backbone file `conf/model/<model>.yaml`
merged at the root (they hold whole sections), then `key.sub=value` overrides. Every section is a pydantic
model that forbids unknown keys, so a typo is an error that names the key and the allowed ones.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lagcl.device import DEVICE_PATTERN
from lagcl.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# Marks a setting added after stage folders were cached under its section's hash, whose default is the
# behaviour from before it existed: at that default it stays out of the hash (`Section.hash_payload`), so
# those folders stay valid; any other value is hashed as usual.
HASHED_WHEN_SET = {"hashed_when_set": True}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def hash_payload(self) -> dict[str, Any]:
        """The section as hashed into stage fingerprints: every value, less HASHED_WHEN_SET settings at
        their default."""
        out = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("hashed_when_set") and value == info.get_default(call_default_factory=True):
                del out[name]
            elif isinstance(value, Section):
                out[name] = value.hash_payload()
        return out


class DataConfig(Section):
    """Where a dataset's raw files are and how to read them (one `conf/data/<name>.yaml` each)."""

    name: str
    format: Literal["ml-100k", "atomic", "ml-1m", "yelp", "amazon2018", "amazon2023", "steam", "table"]
    path: str = Field(description="folder with the raw files, relative to the repository root")
    files: dict[str, str] = Field(default_factory=dict, description="role -> file name inside `path`")
    published_at: str = ""
    domain: str = Field("item", description="domain word for prompts: movie, business, book, game")
    rating_threshold: float = Field(3.0, description="rating > threshold is positive, <= is negative")
    all_positive: bool = False
    rating_range: tuple[float, float] | None = None
    kcore: int = Field(5, ge=1)
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_key: Literal["raw_ids", "draw"] = Field(
        "raw_ids", description="raw_ids: each positive's place in its user's split is a hash of (seed, raw user id, "
        "raw item id), so new data moves only the users who got new ratings (scheduled reruns); draw: one seeded "
        "draw over all rows (the split of the measurements in BENCHMARKS.md made before this setting)")
    item_text_fields: list[str] = Field(default_factory=lambda: ["title", "categories"])
    columns: dict[str, str] = Field(default_factory=dict, description="generic tables: canonical -> raw column")
    strict: bool = Field(True, description="malformed lines are an error (true) or skipped and counted (false)")
    max_interactions: int | None = Field(None, description="read at most this many interactions (for trials)")
    separator: str | None = Field(
        None, json_schema_extra=HASHED_WHEN_SET,
        description="format table: the field separator of its .csv/.tsv/.txt files, one character such as ';' or "
                    "'|' (tab: '\\t'); None: by extension (tab for .tsv, comma otherwise)")
    encoding: str | None = Field(None, description="the raw text files' encoding; None: the format's published one "
                                 "(latin-1 for ml-1m, UTF-8 for the others). A UTF-8 byte-order mark always means UTF-8")
    steam_signed: bool = Field(False, description="steam: a review with recommend False is a negative interaction "
                               "(false: every review is positive, the paper's reading)")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import codecs

        try:
            name = codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; use a Python codec name such as utf-8, latin-1 or cp1252") from None
        if name.startswith(("utf-16", "utf-32")):
            raise ValueError(f"{v} is not read line by line; convert the files to UTF-8 (iconv -f {v} -t UTF-8)")
        return v

    @field_validator("separator")
    @classmethod
    def _one_character(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = {"\\t": "\t", "tab": "\t"}.get(v, v)
        if len(v) != 1 or v in "\r\n\"":
            raise ValueError(f"separator must be one character such as ';', '|' or '\\t' (tab), got {v!r}")
        return v

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> "DataConfig":
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"split must be three non-negative fractions summing to 1, got {self.split}")
        if self.separator is not None and self.format != "table":
            raise ValueError(f"separator is read by format 'table' only, not '{self.format}' (its files have a fixed "
                             "separator)")
        if self.steam_signed and self.format != "steam":
            raise ValueError(f"steam_signed is read by format 'steam' only, not '{self.format}'")
        return self


class EngineConfig(Section):
    """Which implementation answers the four semantic operations (profile, score, partition, similarity)."""

    name: Literal["embedding", "anthropic", "openai", "vllm", "transformers"] = "embedding"
    model: str = "all-MiniLM-L6-v2"
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="env var with the API key (default ANTHROPIC_/OPENAI_API_KEY)")
    api_key_required: bool = Field(True, description="false for local OpenAI-compatible servers that take no key")
    batch_api: bool = Field(False, description="anthropic / openai: score through the Message Batches / Batch API "
                                               "(half price)")
    batch_poll_s: float = Field(30.0, gt=0, description="seconds between Message Batch status polls")
    max_concurrency: int = Field(8, ge=1)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    retry_base_s: float = Field(1.0, gt=0, description="first backoff delay; doubles per retry (with jitter)")
    retry_max_s: float = Field(60.0, gt=0, description="longest backoff delay")
    connect_wait_s: float = Field(
        5.0, gt=0, json_schema_extra=HASHED_WHEN_SET, description="anthropic / openai: until the server has answered once, connection refused or an "
        "unresolvable host is retried for this many seconds, then the stage stops naming engine.base_url (after an "
        "answer, connection errors are retried like 5xx)")
    temperature: float = 0.0
    max_tokens: int = Field(1024, ge=1)
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = Field(64, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict)


class LLMConfig(Section):
    budget_usd: float | Literal["none"] | None = Field(
        None, description="what the whole run's LLM stages may cost together, counted over every attempt (a resumed "
        "run counts what it paid before; docs/design.md 16): stops cleanly (resumable) before a request could pass "
        "it. Unset (null) with a paid engine (a price in llm.prices): the run stops before any call and prints the "
        "estimate; `none`: no cap, on purpose")
    stage_budget_usd: dict[Literal["profiles", "augment", "groups"], float] = Field(
        default_factory=dict, description="stage -> USD that stage may cost in a run (beside the run's budget_usd)")
    prices: dict[str, list[float]] = Field(
        default_factory=dict, description="model -> USD per 1M tokens: [input, output] or "
                                          "[input, output, cache read, cache write]")
    dry_run: bool = False
    repair: bool = Field(True, description="re-ask once with the parse error when a reply is not valid JSON")
    prompt_style: Literal["paper", "compact"] = Field(
        "paper", description="scoring prompts: the paper's (full item profiles, a reason per score) or compact "
                             "(one-line item cards, scores only, compact_items_per_call candidates per call)")
    compact_items_per_call: int = Field(64, ge=1, description="compact style: candidates per scoring call")
    schema_max_chars: int | None = Field(
        None, ge=16, json_schema_extra=HASHED_WHEN_SET,
        description="bound every string of the reply schemas sent for constrained decoding at this many characters "
                    "(JSON-schema maxLength, which llama.cpp's and vLLM's grammars enforce): a small model that "
                    "repeats itself inside a string is made to close it instead of running into max_tokens; only "
                    "the schema sent changes, replies are validated as before. null: no bound")
    schema_pin_ids: bool = Field(
        False, json_schema_extra=HASHED_WHEN_SET,
        description="write each request's own ids into the reply schema sent for constrained decoding: one rating "
                    "per id asked, group members among the ids asked (JSON-schema enum, minItems/maxItems), so a "
                    "server's grammar cannot let the model invent or drop an id; replies are validated as before")
    compact_summary_words: int = Field(20, ge=1, description="compact style: words of the item profile per card")
    reuse_pair_scores: bool = Field(
        True, description="augment (eq. 2-3): reuse the validated score of every (user profile, item profile, "
                          "polarity) pair already answered and send only the changed pairs; a reused score was given "
                          "beside other items than a fresh run's request would list (false: every request in full)")
    prompt_cache: bool = Field(True, description="anthropic: mark the stable prefix (instructions + user "
                                                 "profile) with cache_control; openai caches prefixes itself")
    cache_min_tokens: dict[str, int] = Field(
        default_factory=dict, description="model -> shortest prefix (tokens) the provider caches")

    @property
    def run_budget_usd(self) -> float | None:
        """The run's cap in USD; None without one (unset, or `none`: no cap on purpose)."""
        return None if self.budget_usd in (None, "none") else float(self.budget_usd)

    @field_validator("budget_usd", mode="before")
    @classmethod
    def _none_in_any_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().lower() == "none":
                return "none"
            try:
                return float(value)
            except ValueError:
                raise ValueError("a budget is USD, e.g. 20, or `none` for no cap") from None
        return value

    @field_validator("budget_usd")
    @classmethod
    def _not_negative(cls, value: Any) -> Any:
        if isinstance(value, float) and value < 0:
            raise ValueError("a budget is USD >= 0, or `none` for no cap")
        return value

    @model_validator(mode="after")
    def _prices_have_two_or_four_values(self) -> "LLMConfig":
        for model, values in self.prices.items():
            if len(values) not in (2, 4) or min(values) < 0:
                raise ValueError(f"llm.prices.{model} must be [input, output] or [input, output, cache read, "
                                 f"cache write], USD per 1M tokens, none negative; got {values}")
        return self


class ProfilesConfig(Section):
    history: int = Field(30, ge=1, description="rated items shown per user profile")
    shard_size: int = Field(256, ge=1)
    item_rating_counts: Literal["exact", "coarse", "off"] = Field(
        "exact", json_schema_extra=HASHED_WHEN_SET,
        description="what an item's profile request says of its training ratings: exact (\"12 in training, 75% "
        "positive\"), coarse (\"about 10 in training, mostly positive\": a few new ratings rarely change it, so a "
        "scheduled rerun re-profiles few items) or off (the paper's input: title and metadata only)")

    @field_validator("item_rating_counts", mode="before")
    @classmethod
    def _off_read_as_a_boolean(cls, value):
        # YAML 1.1 reads an unquoted `off` (in a file or in --set KEY=off) as false
        return "off" if value is False else value


class AugmentConfig(Section):
    cold_threshold: int = Field(30, ge=1)
    n_candidates: int = Field(1024, ge=1)
    items_per_call: int = Field(32, ge=1)
    top_fraction: float = Field(0.02, gt=0, le=1)
    shard_size: int = Field(64, ge=1, description="users per scores shard")


class GroupsConfig(Section):
    batch_size: int = Field(100, ge=2)
    target_group_size: int = Field(20, ge=2)
    tau_sim: float = Field(0.8, ge=0, le=1)
    candidate_pairs_k: int = Field(5, ge=1)
    incremental: bool = Field(
        False, description="reuse the previous finished groups result of the dataset made by the same engine, model "
        "and group settings: unchanged profiles keep their partition group, only new or changed ones are partitioned "
        "(lagcl/groups.py). Off: the result depends on the config and the data only, not on what the cache holds",
        json_schema_extra=HASHED_WHEN_SET)
    # LLM outputs made elsewhere (lagcl/group_files.py; README "Bring your own LLM outputs")
    source: Literal["engine", "files"] = Field(
        "engine", description="where the groups come from: `engine` = eq. 5-6 by this run's semantic engine from "
        "the profiles stage's profiles; `files` = read from groups.user_file / groups.item_file (a kind without a "
        "file is grouped by the engine as usual)")
    user_file: str | None = Field(
        None, description="source=files: user groups, `.json` (a list of groups with `members`) or text "
        "(`user_id,group_id` lines), keyed by the dataset's own user ids; relative to the repository root")
    item_file: str | None = Field(
        None, description="source=files: item groups, in either format (as user_file), keyed by the dataset's own "
        "item ids or, with id_map, by the ids of id_map_items")
    lenient: bool = Field(
        False, description="source=files: false = any unknown id, duplicate member or malformed line is one error "
        "naming the file and line; true = such entries are counted (in the manifest) and skipped")
    id_map: Literal["none", "title_year"] = Field(
        "none", description="source=files: `title_year` = item_file is keyed by another dataset's item ids (e.g. "
        "ML-1M's for an ML-100K run), matched to this dataset's items by normalised title and year through "
        "id_map_items; items without a match get no group")
    id_map_items: str | None = Field(
        None, description="id_map=title_year: the other dataset's item file, ML-1M `movies.dat` "
        "(`id::Title (Year)::Genres`) or ML-100K `u.item` (`id|Title (Year)|...`), latin-1; relative to the "
        "repository root")

    def group_file(self, kind: str) -> str | None:
        """The file kind's groups are read from, None where the engine groups that kind."""
        return (self.user_file if kind == "user" else self.item_file) if self.source == "files" else None

    @property
    def engine_kinds(self) -> tuple[str, ...]:
        """The kinds the semantic engine groups (eq. 5-6) in this run."""
        return tuple(k for k in ("user", "item") if self.group_file(k) is None)

    def hash_payload(self) -> dict[str, Any]:
        # file paths never count (their contents' digests are a fingerprint extra, tasks/stages.py), the file
        # settings only with source=files (engine folders from before them stay valid), and the engine's
        # settings only while it groups a kind
        out = super().hash_payload()
        for key in ("source", "user_file", "item_file", "lenient", "id_map", "id_map_items"):
            out.pop(key, None)
        if self.source == "files":
            if not self.engine_kinds:
                out = {}
            out.update(source=self.source, lenient=self.lenient, id_map=self.id_map)
        return out

    @model_validator(mode="after")
    def _files_named(self) -> "GroupsConfig":
        if self.source == "files" and not (self.user_file or self.item_file):
            raise ValueError("source=files reads groups.user_file and/or groups.item_file: set at least one "
                             "(a kind without a file is grouped by the engine)")
        if self.id_map == "title_year" and not self.id_map_items:
            raise ValueError("id_map=title_year needs groups.id_map_items: the item file (ML-1M movies.dat or "
                             "ML-100K u.item) of the dataset whose ids groups.item_file uses")
        return self


class GraphConfig(Section):
    backend: Literal["torch", "dgl"] = "torch"


class GCLConfig(Section):
    """Backbone and training loop (conf/model/<backbone>.yaml)."""

    backbone: Literal["mf", "lightgcn", "sgl", "lightgcl", "xsimgcl"] = "lightgcn"
    emb_dim: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(2048, ge=1)
    epochs: int = Field(300, ge=1)
    patience: int = Field(10, ge=1)
    lambda_reg: float = Field(1e-4, ge=0)
    lambda_cl: float = Field(0.0, ge=0)
    cl_temperature: float = Field(0.2, gt=0)
    cl_loss: Literal["reference", "cosine"] = Field(
        "reference", description="the backbone's contrastive loss without the rank level: `reference` = as the "
        "backbone's reference code computes it (LightGCL: dot products against all nodes, clamped positive); "
        "`cosine` = cosine InfoNCE over in-batch nodes (what SGL and XSimGCL use either way)")
    eps: float = Field(0.1, ge=0, description="XSimGCL noise magnitude")
    l_star: int = Field(1, ge=1, description="XSimGCL contrast layer")
    drop_rate: float = Field(0.1, ge=0, lt=1, description="SGL edge dropout")
    svd_q: int = Field(5, ge=1, description="LightGCL SVD rank")
    min_epochs: int = Field(0, ge=0, description="no early stop before this epoch (contrastive backbones can sit "
                            "in an early validation trough)")
    eval_batch_users: int = Field(1024, ge=1)
    topk_out: int = Field(100, ge=1, description="cf_topk candidates kept per user")
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="where the model, the graph and evaluation run: auto (CUDA when available, "
                                    "else CPU), cpu, cuda[:n]; negatives and noise are drawn on the CPU")
    num_threads: int = Field(1, ge=0, description="torch CPU threads while training (0 = torch's default); "
                             "on ML-100K-sized graphs one thread is fastest, thread sync dominates tiny SpMMs")
    valid_metric: str = Field("recall@20", json_schema_extra=HASHED_WHEN_SET,
                              description="validation metric of early stopping and the best epoch: recall@K or "
                              "ndcg@K (all-rank, training positives masked)")
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("valid_metric", mode="before")
    @classmethod
    def _metric_at_k(cls, v: Any) -> str:
        text = str(v).strip().lower()
        if not re.fullmatch(r"(recall|ndcg)@[1-9][0-9]*", text):
            raise ValueError("expected recall@K or ndcg@K with K >= 1 (e.g. recall@20, ndcg@10)")
        return text

    @property
    def valid_key(self) -> tuple[str, int]:
        """`valid_metric` as the (metric, k) key of lagcl.evaluate's results."""
        metric, k = self.valid_metric.split("@")
        return metric, int(k)


class RankConfig(Section):
    """The rank-level activation switches (eq. 7-12)."""

    enabled: bool = True
    reading: Literal["paper", "official"] = Field(
        "paper", json_schema_extra=HASHED_WHEN_SET,
        description="paper: eq. 7-12 as docs/design.md reads them; official: the objective of the authors' released "
        "code (one easy and one hard negative per positive, bpr(easy) + w_h bpr(hard), their group-aware InfoNCE "
        "and regulariser; hard_neg_share and item_side unused), docs/design.md 15")
    w_h: float = Field(1.5, gt=0)
    tau_p: float = Field(0.2, gt=0)
    tau_e_ratio: float = Field(0.45, gt=0, description="tau_e = tau_e_ratio * tau_p (Figure 6)")
    tau_h_ratio: float = Field(0.1, gt=0, description="tau_h = tau_h_ratio * tau_p (Figure 6)")
    lambda_cl: float = Field(0.15, ge=0)
    dislike_sample_prob: float = Field(0.2, ge=0, le=1)
    groups_from: Literal["groups", "categories"] = "groups"
    hard_neg_share: float = Field(0.0, ge=0, le=1, description="share of LABPR negatives drawn from the "
                                  "positive's item group (hard, eq. 7); 0 = uniform draws only")
    item_side: float = Field(0.0, ge=0, description="weight of LABPR's item -> user half (negative users, hard "
                             "when in the positive user's group); 0 = off")

    @model_validator(mode="after")
    def _official_has_no_item_side(self) -> RankConfig:
        if self.reading == "official" and self.item_side > 0:
            raise ValueError("rank.item_side has no counterpart in the authors' code (rank.reading=official): set "
                             "rank.item_side=0 or rank.reading=paper")
        return self


class DataLevelConfig(Section):
    """How the gcl stage turns the augment stage's like scores into training signal (docs/design.md 13).

    `calibrated` (default): item-centred scores (a user's like score minus the item's mean over the scored
    users: hub items stop winning for everyone), at most `max_per_user` and `cap_ratio` x the user's real
    training positives, only items the control ranks within `prune_rank`, on `channel`, at an edge/triplet
    weight from `weights`, chosen on validation by the gate. `paper`: the augment stage's top `top_fraction`
    as full-weight graph edges and BPR positives (eq. 2-4 as written)."""

    reading: Literal["calibrated", "paper"] = "calibrated"
    centre: bool = True
    max_per_user: int = Field(5, ge=1)
    cap_ratio: float = Field(0.25, gt=0)
    prune_rank: int | None = Field(100, ge=1, description="keep augmented items within the control's top-N for "
                                   "the user (at most gcl.topk_out); null = no pruning")
    channel: Literal["graph", "bpr", "both"] = "both"
    weights: list[float] = Field(default_factory=lambda: [0.25, 1.0], description="strengths tried on validation "
                                 "(edge and triplet weight of an augmented positive); off is always a choice")
    dislike_prob: float = Field(0.0, ge=0, le=1, description="while the level is on: probability that a BPR "
                                "negative is one of the user's known or augmented dislikes (eq. 4)")


class GateConfig(Section):
    """The validation gate (docs/design.md 13): each level is kept only when it beats the step before it on
    validation Recall@20 by more than `min_gain` and above the noise (`max_p`); test is only reported."""

    enabled: bool = Field(True, description="false: every configured level is kept whatever validation says")
    min_gain: float = Field(0.0, ge=0, description="relative validation Recall@20 gain a level must bring")
    min_precision_ratio: float = Field(1.0, ge=0, description="the data level is trained only when its augmented "
                                       "positives hit validation positives of cold users at least this many "
                                       "times as often as the control's own top-k for them")
    max_p: float = Field(0.05, gt=0, le=1, description="a level is kept only when the paired sign-flip test of "
                         "its per-user validation Recall@20 against the step before gives p below this (lagcl/stats.py); "
                         "1 turns the noise rule off")
    resamples: int = Field(10000, ge=100, description="sign flips and bootstrap draws of each paired test over users")


class LoraSpec(Section):
    """LoRA adapters (peft) for large rerankers: only the adapters and the score head train."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class RerankerSpec(Section):
    """Which network f_theta_rer of eq. 14 is and how it trains (conf/model/reranker-<name>.yaml)."""

    path: str = Field(description="local model folder (relative to the repository root, $VARS expanded), or "
                                  "pkg:<python package> for a model shipped in a PyPI package; never downloaded")
    gguf_file: str | None = Field(None, description="GGUF file inside `path` (transformers dequantizes it)")
    format: Literal["cot", "compact"] = Field(
        "cot", description="cot: the paper's Figure 19 prompt; compact: the same fields without the instructions, "
                           "candidate first (for small encoders with short context)")
    max_length: int = Field(512, ge=16)
    profile_chars: int = Field(400, ge=0, description="user/item profile text cut to this many characters")
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: LoraSpec | None = None
    launcher: Literal["inline", "deepspeed"] = Field(
        "inline", description="inline: train inside the pipeline process; deepspeed: print the multi-GPU launch "
                              "command and wait for its result")
    num_gpus: int = Field(1, ge=1)
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads while training/scoring")
    style: Literal["cross", "late"] = Field(
        "cross", description="cross: one prompt per (u, v) through the fine-tuned model (the paper's style, cost "
                             "grows with users x |C_u|); late: user and item texts encoded once each by the frozen "
                             "sentence encoder at `path`, combined per pair by a small trained head (lagcl/rerank/late.py)")
    head_hidden: int = Field(64, ge=1, description="late: hidden units of the head")
    head_epochs: int = Field(20, ge=1, description="late: epochs of the head over the training pairs")
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="auto (CUDA when available, else CPU), cpu, or cuda[:n]")


def _reranker_file(name: str) -> dict[str, Any]:
    """The `rerank` section of conf/model/<name>.yaml (the reranker's defaults)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (CONF_DIR / "model").glob("reranker-*.yaml"))
        raise ValueError(f"unknown reranker '{name}': choose one of {', '.join(choices)} (files in {path.parent})")
    section = (yaml.safe_load(path.read_text()) or {}).get("rerank")
    if not isinstance(section, dict) or "spec" not in section:
        raise ValueError(f"{path} must hold a `rerank:` mapping with a `spec:` section")
    return section


# the fusion settings' keys, once in the rerank section: a configuration still writing them there is told where
FUSION_KEYS = {"alpha", "tau", "grid_search", "alpha_grid", "tau_grid"}


class RerankConfig(Section):
    """The rerank level (eq. 13-21). `model` names conf/model/<model>.yaml, whose `rerank:` section gives the
    defaults of this whole section (its `spec` above all); explicit values here win over the file."""

    model: str = "reranker-cpu"
    spec: RerankerSpec
    candidates: int = Field(20, ge=0, le=100, description="|C_u|: CF top-K reranked per user")
    history: int = Field(10, ge=0, description="liked and disliked history items in the prompt (each)")
    epochs: int = Field(1, ge=1)
    deepspeed: str | None = Field(None, description="conf/deepspeed/<name>.json or a JSON path (ZeRO config)")
    holdout_users: float = Field(0.2, ge=0, lt=1, description="users kept out of training: the grid search "
                                                              "tunes alpha/tau on their validation labels")
    neg_per_pos: int | None = Field(4, ge=1, description="negatives sampled per positive in training (None: all)")
    max_train_pairs: int | None = Field(None, ge=1, description="cap on training pairs (CPU trials)")
    max_users: int | None = Field(None, ge=1, description="score and evaluate a seeded sample of users (trials)")

    @model_validator(mode="before")
    @classmethod
    def _from_model_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        moved = sorted(FUSION_KEYS & set(data))
        if moved:
            raise ValueError(f"rerank.{moved[0]} is now fusion.{moved[0]}: the fusion settings (eq. 19-21) have their "
                             f"own `fusion:` section; write {', '.join(f'fusion.{k}' for k in moved)}")
        name = data.get("model", "reranker-cpu")
        if not isinstance(name, str):
            return data
        if "spec" in data and isinstance(data["spec"], RerankerSpec):
            return data
        return _deep_merge(_reranker_file(name), data)


class FusionConfig(Section):
    """How the evaluate stage fuses the CF and reranker scores (eq. 19-21). Only the evaluate stage reads it, so
    only its fingerprint hashes it: other fusion settings never retrain the reranker."""

    alpha: float = Field(0.5, ge=0, le=1, description="eq. 19 weight of the CF score")
    tau: float = Field(1.0, gt=0, description="eq. 20 softmax temperature (both scores, docs/design.md decision 11)")
    grid_search: bool = Field(True, description="tune alpha/tau on the held-out users' validation labels "
                                                "(rerank.holdout_users)")
    alpha_grid: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    tau_grid: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])


class EvaluateConfig(Section):
    topk: list[int] = Field(default_factory=lambda: [10, 20, 50])


class RecommendConfig(Section):
    """The `recommendations` table the evaluate stage leaves (the pipeline's product)."""

    n: int = Field(50, ge=1, description="recommendations per user (fewer where the CF list, gcl.topk_out long, "
                   "holds fewer once the excluded items are removed)")
    exclude: Literal["rated", "positives"] = Field(
        "rated", description="items never recommended to a user: rated = every item the user interacted with in "
        "training and validation, liked or disliked (the 'dislikes masked' test protocol); positives = the "
        "training and validation positives only (the 'all' protocol of the test metrics: a known dislike can "
        "come back)")


class PipelineConfig(Section):
    # stage -> on/off; a stage not named is on. The stage names are the registry's (tasks/stages.py), which
    # the planner checks them against: lagcl does not know the pipeline's stages
    stages: dict[str, bool] = Field(default_factory=dict)
    ablation: Literal["none", "no-data", "no-rank", "no-rerank"] = "none"
    from_stage: str | None = None
    runner: Literal["local", "dask"] = Field(
        "local", description="dask: the flow runs on prefect-dask's DaskTaskRunner and the LLM/scoring "
        "fan-out (profile and score requests) is spread over the cluster's workers")
    dask_address: str | None = Field(None, description="scheduler of a running Dask cluster (tcp://host:8786); "
                                     "unset = a LocalCluster on this machine for the run")
    dask_workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    dask_threads_per_worker: int = Field(1, ge=1)


class Config(Section):
    seed: int = 2024
    train_seed: int | None = Field(None, description="seed of model training only (initialisation, sampling "
                                   "order); null = `seed`. `make table2/table3 SEEDS=n` vary it, so the split and "
                                   "the LLM stages stay the same across seeds")
    cache_dir: str = "cache"
    data: DataConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    gcl: GCLConfig = Field(default_factory=GCLConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    data_level: DataLevelConfig = Field(default_factory=DataLevelConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    rerank: RerankConfig = Field(default_factory=lambda: RerankConfig())
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @property
    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (the config part of a stage fingerprint)."""
        payload = {}
        for s in sections:
            value = getattr(self, s)
            payload[s] = (value.hash_payload() if isinstance(value, Section)
                          else value.model_dump(mode="json") if isinstance(value, BaseModel) else value)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def _choices(kind: str, conf_dir: Path) -> list[str]:
    return sorted(p.stem for p in (conf_dir / kind).glob("*.yaml"))


def _named_file(kind: str, name: str, conf_dir: Path) -> dict[str, Any]:
    path = conf_dir / kind / f"{name}.yaml"
    choices = backbone_names(conf_dir) if kind == "model" else _choices(kind, conf_dir)
    if not path.is_file():
        raise ConfigError(f"unknown {kind} '{name}': choose one of {', '.join(choices)} (files in {conf_dir / kind})")
    tree = _read_yaml(path)
    if kind == "model" and name not in choices:
        raise ConfigError(backbone_error(name, choices))
    return tree


def backbone_names(conf_dir: Path | str | None = None) -> list[str]:
    """The presets of conf/model/ that name a backbone (a `gcl:` section): what `--model` / MODEL= choose. The
    reranker presets beside them (a `rerank:` section only) are chosen with rerank.model."""
    folder = Path(conf_dir or CONF_DIR) / "model"
    return sorted(p.stem for p in folder.glob("*.yaml") if isinstance(_read_yaml(p).get("gcl"), dict))


def backbone_error(name: str, backbones: list[str]) -> str:
    reranker = name.startswith("reranker-")
    short = name.removeprefix("reranker-") if reranker else "<name>"
    return (f"model '{name}' is {'a reranker preset, not a backbone' if reranker else 'not a backbone'}: MODEL= / "
            f"--model chooses one of {', '.join(backbones)}; rerankers are chosen with RERANKER={short} (make) or "
            f"--set rerank.model=reranker-{short}")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`gcl.lr=0.01` -> (["gcl", "lr"], 0.01); the value is read as YAML so lists and bools work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = _section_model(err["loc"][:-1])
            allowed = sorted(section.model_fields) if section else []
            close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown key '{loc}'{hint}; allowed keys here: {', '.join(allowed)}")
        else:
            lines.append(f"bad value for '{loc}': {err['msg']} (got {err.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def load_config(
    data: str = "ml-100k",
    engine: str = "embedding",
    model: str = "lightgcn",
    overrides: list[str] | tuple[str, ...] = (),
    conf_dir: Path | str | None = None,
) -> Config:
    """Build and validate one run's configuration; raises ConfigError naming any bad key or value."""
    conf = Path(conf_dir) if conf_dir else CONF_DIR
    tree = _read_yaml(conf / "defaults.yaml")
    tree["data"] = _deep_merge(tree.get("data", {}), _named_file("data", data, conf))
    tree["data"].setdefault("name", data)
    # engine and model files hold whole sections (engine + llm prices; gcl + rank), merged at the root
    tree = _deep_merge(tree, _named_file("engine", engine, conf))
    tree = _deep_merge(tree, _named_file("model", model, conf))
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(tree, path, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
