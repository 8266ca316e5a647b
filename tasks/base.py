"""The stage graph, fingerprints, and the context every stage runs in.

Fingerprints are known before anything runs (they depend on configuration, code versions and the
contents of the raw input files, digested by lagcl.data.digest), so the flow, `lagcl status` and Prefect's
cache keys all agree on them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lagcl.artifacts import ArtifactStore, StageDir, fingerprint, read_manifest
from lagcl.config import Config
from lagcl.data.digest import InputFile, inputs_digest, raw_inputs
from lagcl.data.readers import raw_root
from lagcl.errors import ConfigError
from lagcl.semantic import SemanticEngine, make_engine

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("lagcl")
log.setLevel(logging.INFO)  # stage counts and timings are part of the output, whatever the root level


@dataclass(frozen=True)
class StageSpec:
    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    version: str


# the order is the execution order; a stage's version changes when its code changes what it writes
# (rerank 2: the classifier head is drawn from `seed`, not from the process's random state; augment 2: quality
# figures against validation positives only; gcl 2 / evaluate 2: the validation gate and the control;
# control 2 / gcl 3: per-user tables and the gate's noise rule, lagcl/stats.py; evaluate 3: the
# `recommendations` table; augment 3: candidate samples keyed by raw ids, stable when items are added)
STAGES: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("prepare", ("data",), (), "1"),
    StageSpec("profiles", ("data", "engine", "profiles"), ("prepare",), "1"),
    StageSpec("augment", ("engine", "augment"), ("prepare", "profiles"), "3"),
    StageSpec("groups", ("engine", "groups"), ("prepare", "profiles"), "2"),
    StageSpec("control", ("gcl", "graph", "evaluate"), ("prepare",), "2"),
    StageSpec("gcl", ("gcl", "rank", "graph", "evaluate", "data_level", "gate"), ("prepare", "augment", "groups",
                                                                                    "control"), "3"),
    StageSpec("rerank", ("rerank",), ("prepare", "profiles", "augment", "gcl"), "2"),
    StageSpec("evaluate", ("evaluate", "rerank", "gate", "recommend"), ("prepare", "control", "gcl", "rerank"), "3"),
)}


def finished(sd: StageDir) -> bool:
    """Complete, with no failed requests left to retry: a finished stage whose manifest counts
    failures runs again and asks only what failed (the rest is in its shards and the LLM cache)."""
    manifest = read_manifest(sd.path)
    return sd.complete and not (manifest or {}).get("meta", {}).get("failed")


@dataclass(frozen=True)
class StageRef:
    """What a stage returns: a reference to its finished artifact folder, never the data itself."""

    stage: str
    fingerprint: str
    path: str


def enabled_stages(cfg: Config) -> list[str]:
    """Stages this run executes, after ablation switches (Table 3)."""
    on = {"prepare": True, **{k: v for k, v in cfg.pipeline.stages.items()}}
    ablation = cfg.pipeline.ablation
    if ablation == "no-data":
        on["augment"] = False
    elif ablation == "no-rerank":
        on["rerank"] = False
    return [s for s in STAGES if on.get(s, True)]


def rank_enabled(cfg: Config) -> bool:
    return cfg.rank.enabled and cfg.pipeline.ablation != "no-rank"


@dataclass
class Plan:
    cfg: Config
    fingerprints: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, InputFile] = field(default_factory=dict)  # role -> raw file digested into prepare's

    @property
    def store(self) -> ArtifactStore:
        root = Path(self.cfg.cache_dir)
        return ArtifactStore(root if root.is_absolute() else REPO_ROOT / root, self.cfg.data.name)

    def ref(self, stage: str) -> StageRef:
        fp = self.fingerprints[stage]
        return StageRef(stage, fp, str(self.store.stage_path(stage, fp)))

    def stage_dir(self, stage: str) -> StageDir:
        """The stage's folder; its manifest records the config sections the fingerprint was made of."""
        sd = self.store.stage(stage, self.fingerprints[stage])
        sd.config = {"seed": self.cfg.seed, **{s: getattr(self.cfg, s).model_dump(mode="json")
                                               for s in STAGES[stage].sections}}
        return sd

    def upstream(self, stage: str) -> dict[str, StageRef]:
        return {u: self.ref(u) for u in STAGES[stage].upstream if u in self.fingerprints}


# stages that cannot run without another (the other upstreams are optional inputs)
REQUIRES = {"augment": ("profiles",), "groups": ("profiles",), "gcl": ("control",), "rerank": ("gcl",),
            "evaluate": ("gcl",)}


def make_plan(cfg: Config) -> Plan:
    plan = Plan(cfg)
    enabled = enabled_stages(cfg)
    for name in enabled:
        missing = [r for r in REQUIRES.get(name, ()) if r not in enabled]
        if missing:
            raise ConfigError(f"stage '{name}' needs stage(s) {missing}: set pipeline.stages.{missing[0]}=true "
                              f"or pipeline.stages.{name}=false")
    plan.inputs = raw_inputs(cfg.data, raw_root(cfg.data, REPO_ROOT), plan.store.root)
    for name in enabled:
        spec = STAGES[name]
        config_hash = _config_hash(cfg, spec.sections)
        extra = f"seed={cfg.seed}" + (f";rank={rank_enabled(cfg)}" if name == "gcl" else "")
        if name == "prepare":  # the raw data itself: new or changed files recompute prepare and what follows
            extra += f";raw={inputs_digest(plan.inputs)}"
        if name in ("control", "gcl", "evaluate"):  # the cold/warm split of the metrics
            extra += f";cold={cfg.augment.cold_threshold}"
        if cfg.train_seed is not None and name in ("control", "gcl", "rerank", "evaluate"):
            extra += f";train_seed={cfg.train_seed}"
        if name == "augment" and cfg.llm.prompt_style != "paper":  # other scores (paper runs keep their folders)
            extra += f";prompt_style={cfg.llm.prompt_style},{cfg.llm.compact_items_per_call}," \
                     f"{cfg.llm.compact_summary_words}"
        ups = {u: plan.fingerprints[u] for u in spec.upstream if u in plan.fingerprints}
        plan.fingerprints[name] = fingerprint(name, config_hash + extra, ups, spec.version)
    return plan


def _config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    """The sections' hash without `data.path`: where the raw files are does not change a result, their
    contents (the prepare fingerprint's raw digest) do."""
    if "data" not in sections:
        return cfg.section_hash(*sections)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": ""})}).section_hash(*sections)


@contextmanager
def semantic_engine(plan: Plan, stage: str | None = None) -> Iterator[SemanticEngine]:
    """The run's semantic engine. With `pipeline.runner=dask` its profile and score requests fan out over
    the Dask cluster of the flow's DaskTaskRunner (prefect-dask), one part per worker thread; the stage
    process stays the only writer of its folder. `stage` applies llm.stage_budget_usd[stage]."""
    cfg = plan.cfg
    if stage is not None:
        cfg = cfg.model_copy(update={"llm": cfg.llm.for_stage(stage)})
    if cfg.pipeline.runner != "dask":
        yield make_engine(cfg, plan.store.root)
        return
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    from lagcl.semantic.distributed import DistributedEngine

    ctx = FlowRunContext.get()
    if ctx is None or not isinstance(ctx.task_runner, DaskTaskRunner):
        raise ConfigError("pipeline.runner=dask: the stages run inside the flow's `lagcl-stages-dask` subflow, "
                          "which owns the Dask cluster; run them through `python -m flows.pipeline` / `make pipeline`")
    client = ctx.task_runner.client
    parts = sum(client.nthreads().values())
    log.info("fan-out over the Dask cluster at %s: %d worker thread(s)", client.scheduler.address, parts)
    yield DistributedEngine(cfg, plan.store.root, client.get_executor(), parts)
