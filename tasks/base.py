"""The planner (fingerprints from the stage registry, tasks/stages.py), the context every stage runs in
(`Plan`, `plan.input`), and the stage template (`run_stage`) every stage module runs through (docs/stages.md).

Fingerprints are known before anything runs (they depend on configuration, code versions and the
contents of the raw input files, digested by lagcl.data.digest), so the flow, `lagcl status` and Prefect's
cache keys all agree on them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import polars as pl

from lagcl.artifacts import ArtifactStore, StageDir, fingerprint, has_table, is_complete, read_manifest, read_table
from lagcl.config import Config
from lagcl.data.digest import DigestIndex, InputFile, raw_inputs
from lagcl.data.readers import raw_root
from lagcl.errors import ConfigError, ContractError
from lagcl.semantic import SemanticEngine, make_engine
from tasks.budget import LLM_STAGES, paid_by, stage_budget
from lagcl.meta import RequestsMeta, meta_of
# rank_enabled is imported from here by the stage modules
from tasks.stages import STAGES, enabled_stages, rank_enabled  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("lagcl")
log.setLevel(logging.INFO)  # stage counts and timings are part of the output, whatever the root level


def finished(sd: StageDir) -> bool:
    """Complete, with no failed requests left to retry: a finished stage whose manifest counts
    failures runs again and asks only what failed (the rest is in its shards and the LLM cache)."""
    manifest = read_manifest(sd.path)
    return sd.complete and not RequestsMeta.of((manifest or {}).get("meta", {})).failed


@dataclass(frozen=True)
class StageRef:
    """What a stage returns: a reference to its finished artifact folder, never the data itself."""

    stage: str
    fingerprint: str
    path: str


@dataclass
class Plan:
    cfg: Config
    fingerprints: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, InputFile] = field(default_factory=dict)  # role -> raw file digested into prepare's
    group_inputs: dict[str, InputFile] = field(default_factory=dict)  # groups.source=files: role -> file
    # inside a stage body (`run_stage` hands it `for_stage(name)`): the stage, and what it has read of each upstream
    stage: str | None = None
    read: dict[str, list[str]] = field(default_factory=dict)
    # pipeline.runner=dask: the executor the flow hands its stages (flows/dask.py; `stage_engine`)
    fanout: "Fanout | None" = field(default=None, repr=False, compare=False)

    def for_stage(self, stage: str) -> "Plan":
        """This plan as stage `stage`'s body sees it: its `input` calls are held to the stage's declared `reads`."""
        return replace(self, stage=stage, read={})

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
        sd.writes = STAGES[stage].writes
        sd.config = {"seed": self.cfg.seed, **{s: getattr(self.cfg, s).model_dump(mode="json")
                                               for s in STAGES[stage].hashed_sections(self.cfg)}}
        return sd

    def upstream(self, stage: str) -> dict[str, StageRef]:
        return {u: self.ref(u) for u in STAGES[stage].upstream_for(self.cfg) if u in self.fingerprints}

    def input(self, stage: str, table: str, optional: bool = False) -> pl.DataFrame | None:
        """Table `table` of the finished stage `stage` of this run: the one way a stage reads an upstream.
        `optional`: None while that stage is off, unfinished or without such a table (an optional input);
        otherwise a missing table is an ArtifactError naming the folder. Inside a stage body a table the stage's
        registry entry does not list in `reads` is refused (tasks/stages.py: the registry is the contract)."""
        if self.stage is not None:
            declared = STAGES[self.stage].reads.get(stage, ())
            if table not in declared:
                raise ContractError(f"the {self.stage} stage reads {stage}.{table}, which its registry entry does not "
                                    f"declare (tasks/stages.py reads[{stage!r}] = {declared}): add it there")
            if table not in self.read.setdefault(stage, []):
                self.read[stage].append(table)
        if stage not in self.fingerprints:
            if optional:
                return None
            raise ConfigError(f"stage '{stage}' is not part of this run: enable pipeline.stages.{stage}")
        folder = Path(self.ref(stage).path)
        if optional and not (is_complete(folder, verify=False) and has_table(folder, table)):
            return None
        return read_table(folder, table)

    def meta(self, stage: str) -> dict:
        """The manifest meta of stage `stage` of this run ({} while it is off or unfinished)."""
        return meta_of(self.ref(stage).path) if stage in self.fingerprints else {}


def make_plan(cfg: Config) -> Plan:
    plan = Plan(cfg)
    enabled = enabled_stages(cfg)
    for name in enabled:
        missing = [r for r in STAGES[name].requires_for(cfg) if r not in enabled]
        if missing:
            raise ConfigError(f"stage '{name}' needs stage(s) {missing}: set pipeline.stages.{missing[0]}=true "
                              f"or pipeline.stages.{name}=false")
    plan.inputs = raw_inputs(cfg.data, raw_root(cfg.data, REPO_ROOT), plan.store.root)
    if "groups" in enabled:
        plan.group_inputs = group_inputs(cfg, plan.store.root)
    for name in enabled:
        spec = STAGES[name]
        config_hash = _config_hash(cfg, spec.hashed_sections(cfg))
        ups = {u: plan.fingerprints[u] for u in spec.upstream_for(cfg) if u in plan.fingerprints}
        plan.fingerprints[name] = fingerprint(name, config_hash + spec.extra(plan), ups, spec.version)
    return plan


def group_inputs(cfg: Config, cache_root: Path) -> dict[str, InputFile]:
    """`groups.source: files`: role -> each file the groups stage reads, with its SHA-256 (hashed once per size and
    mtime, lagcl.data.digest); {} with source=engine."""
    paths = group_file_paths(cfg)
    if not paths:
        return {}
    index = DigestIndex(cache_root)
    files = {role: index.file(role, p) for role, p in paths.items()}
    index.save()
    return files


def group_file_paths(cfg: Config) -> dict[str, Path]:
    """`groups.source: files`: role -> path of each file the groups stage reads (relative paths from the repository
    root, like data.path); a named file that is not there is a ConfigError before anything runs."""
    g = cfg.groups
    named = {f"{k}_file": g.group_file(k) for k in ("user", "item")}
    if g.source == "files" and g.id_map != "none" and g.item_file:
        named["id_map_items"] = g.id_map_items
    out = {}
    for role, name in named.items():
        if not name:
            continue
        p = Path(name).expanduser()
        p = p if p.is_absolute() else REPO_ROOT / p
        if not p.is_file():
            raise ConfigError(f"groups.{role} {name} does not exist (looked for {p}); a relative path is read from "
                              "the repository root")
        out[role] = p
    return out


def _config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    """The sections' hash without `data.path`: where the raw files are does not change a result, their
    contents (the prepare fingerprint's raw digest) do."""
    if "data" not in sections:
        return cfg.section_hash(*sections)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": ""})}).section_hash(*sections)


@dataclass(frozen=True)
class Fanout:
    """Where an LLM stage's profile and score requests fan out (`pipeline.runner=dask`): an executor of the
    flow's cluster and its number of worker threads. The flow hands it to the plan (`Plan.fanout`, flows/dask.py);
    nothing here looks for a cluster."""

    executor: object  # a concurrent.futures.Executor (a Dask client's `get_executor()`)
    parts: int
    where: str = ""  # for the log line: the scheduler's address


def stage_engine(plan: Plan, stage: str) -> SemanticEngine:
    """The run's semantic engine for LLM stage `stage`, with what it may spend (tasks/budget.py: the run's
    budget less what its stages have cost, every attempt counted; a paid engine without a budget stops here).
    The one place a stage's budget is worked out: the local engine and the Dask fan-out both get it from here.
    With `pipeline.runner=dask` its profile and score requests fan out over the executor the flow handed the
    plan (`plan.fanout`: the cluster of its DaskTaskRunner, one part per worker thread); the stage process stays
    the only writer of its folder."""
    cfg = plan.cfg
    budget = stage_budget(plan, stage)
    if cfg.pipeline.runner != "dask":
        return make_engine(cfg, plan.store.root, budget)
    fanout = plan.fanout
    if fanout is None:
        raise ConfigError("pipeline.runner=dask: the stages run inside the flow's `lagcl-stages-dask` subflow, "
                          "which owns the Dask cluster; run them through `python -m flows.pipeline` / `make pipeline`")
    from lagcl.semantic.distributed import DistributedEngine

    log.info("fan-out over the Dask cluster at %s: %d worker thread(s)", fanout.where, fanout.parts)
    return DistributedEngine(cfg, plan.store.root, fanout.executor, fanout.parts, budget=budget)


# --- the stage template: what every stage does around its own work -------------------------------------------
@dataclass
class Finish:
    """What a stage body hands the template: its manifest meta and, where not every file in the folder is an
    output, the files to list. `summary=False`: the body logged its own outcome (a reused or empty run)."""

    meta: dict
    files: list[str] | None = None
    summary: bool = True
    timed: bool = True  # False: `meta` is another folder's, timings included


Body = Callable[[Plan, StageDir], "dict | Finish"]


def run_stage(plan: Plan, name: str, body: Body, summary: Callable[[dict], None] | None = None) -> StageRef:
    """Run stage `name`: refuse without a required upstream, hand a training stage to the DGL environment
    where it must run there (tasks/dgl.py), take the folder's lock, return at once when it is finished (a
    finished stage whose manifest counts failed requests runs again and asks only those), else run `body`,
    time it into the meta (`spec.timing`), write the manifest and log `summary(meta)`."""
    spec = STAGES[name]
    ups = plan.upstream(name)
    for up, what in spec.requires_for(plan.cfg).items():
        if up not in ups:
            raise ConfigError(f"the {name} stage {what}: enable pipeline.stages.{up}")
    if spec.trains:
        from tasks import dgl

        if dgl.runs_in_dgl_env(plan):
            return dgl.run_in_dgl_env(plan, name)
    ref = plan.ref(name)
    with plan.stage_dir(name) as sd:
        if finished(sd):
            return ref
        t0 = time.perf_counter()
        bound = plan.for_stage(name)
        out = body(bound, sd)
        out = out if isinstance(out, Finish) else Finish(out)
        if spec.timing and out.timed:
            out.meta[spec.timing] = round(time.perf_counter() - t0, 3)
        if name in LLM_STAGES and out.timed and (paid := paid_by(plan, name)) is not None:
            out.meta["llm_paid_usd"] = round(paid, 6)  # every attempt: the run budget counts it (tasks/budget.py)
        sd.finish(out.meta, files=out.files, read=bound.read)
    if summary is not None and out.summary:
        summary(out.meta)
    return ref
