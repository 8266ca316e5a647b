"""What a run is: the command-line options every `lagcl` command and `python -m flows.pipeline` share, and the
configuration they make.

Each command takes only the options it uses: `add_store_options` (which dataset's store: `compare`),
`add_config_options` (which configuration, so which stage folders: `status`, `recommend`) and `add_run_options`
(those plus how to run it: `run`, `python -m flows.pipeline`)."""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from lagcl.config import CONF_DIR, Config, backbone_error, backbone_names, load_config
from tasks.base import STAGES

ABLATIONS = {"no-data": "without the data level (no LLM-augmented edges)",
             "no-rank": "without the rank level (plain BPR / InfoNCE)",
             "no-rerank": "without the rerank level (CF ranking only)"}


def _presets(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / kind).glob("*.yaml"))


def backbone(text: str) -> str:
    """argparse type of --model: a backbone preset of conf/model/, never a reranker preset."""
    names = backbone_names()
    if text not in names:
        raise argparse.ArgumentTypeError(backbone_error(text, names))
    return text


def positive_int(text: str) -> int:
    """argparse type of --n: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number: N must be a positive integer such as "
                                         "10") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"N must be a positive integer (1 or more), got {value}")
    return value


def add_store_options(p: argparse.ArgumentParser) -> None:
    """Which dataset, and settings such as cache_dir that say where its store is."""
    data = _presets("data")
    p.add_argument("--data", default="ml-100k", choices=data, metavar="NAME",
                   help=f"dataset: conf/data/<NAME>.yaml, one of {', '.join(data)} (default: %(default)s; make: DATA=)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a configuration setting, repeatable, e.g. --set gcl.lr=0.002 --set cache_dir=/tmp/c "
                        "(keys and defaults: conf/defaults.yaml and README; make: OVERRIDES='k=v k=v')")


def add_config_options(p: argparse.ArgumentParser) -> None:
    """The options that make a run's configuration, hence its stages' fingerprints and folders."""
    add_store_options(p)
    engines = _presets("engine")
    p.add_argument("--engine", default="embedding", choices=engines, metavar="NAME",
                   help=f"semantic engine for profiles, scores and groups: one of {', '.join(engines)} "
                        "(default: %(default)s, offline; make: ENGINE=)")
    p.add_argument("--model", default="lightgcn", type=backbone, metavar="NAME",
                   help=f"CF backbone: one of {', '.join(backbone_names())} (default: %(default)s; make: MODEL=). "
                        "The reranker is chosen with --set rerank.model=reranker-<name> (make: RERANKER=<name>)")
    p.add_argument("--rank", choices=["on", "off"], default=None,
                   help="rank level (LABPR / LA-InfoNCE, eq. 7-12): on or off (default: the model preset's "
                        "rank.enabled, on; make: RANK=)")
    p.add_argument("--ablation", choices=list(ABLATIONS), default=None,
                   help="Table 3 run without one level: " + "; ".join(f"{k} {v}" for k, v in ABLATIONS.items())
                        + " (default: none, every level; make: ABLATION=)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The configuration's options plus how to run it (only `run` / `python -m flows.pipeline` take these)."""
    add_config_options(p)
    p.add_argument("--from-stage", choices=list(STAGES), default=None, metavar="STAGE",
                   help=f"recompute from this stage on, one of {', '.join(STAGES)}; LLM answers stay in the "
                        "response cache (default: resume at the first unfinished stage; make: FROM=)")
    p.add_argument("--dry-run", action="store_true",
                   help="price the LLM stages (requests, tokens, USD) and exit without running anything "
                        "(default: off; make: DRY_RUN=1)")


RUN_PARAMETERS = ("data", "engine", "model", "rank", "ablation", "overrides")  # the flow's, in its order
RUN_DEFAULTS = {"data": "ml-100k", "engine": "embedding", "model": "lightgcn"}


def run_parameters(source: "argparse.Namespace | Mapping[str, Any]") -> dict[str, Any]:
    """The run's parameters, as the flow `lagcl-pipeline` takes them, from parsed options or a mapping (the flow's
    own arguments, a deployment's `parameters`); what is not given takes the flow's default."""
    get = source.get if isinstance(source, Mapping) else (lambda k, d=None: getattr(source, k, d))
    out = {k: get(k, RUN_DEFAULTS.get(k)) for k in RUN_PARAMETERS}
    out["overrides"] = list(out["overrides"] or [])
    return out


def run_config(source: "argparse.Namespace | Mapping[str, Any]", dry_run: bool = False) -> Config:
    """The configuration of a run's parameters (`run_parameters`): the one call every entry point makes."""
    p = run_parameters(source)
    return build_config(p["data"], p["engine"], p["model"], p["rank"], p["ablation"], p["overrides"], dry_run)


def build_config(data: str, engine: str, model: str, rank: str | None, ablation: str | None,
                 overrides: list[str], dry_run: bool = False) -> Config:
    sets = list(overrides)
    if rank is not None:
        sets.append(f"rank.enabled={'true' if rank in ('on', 'true', '1') else 'false'}")
    if ablation:
        sets.append(f"pipeline.ablation={ablation}")
    if dry_run:
        sets.append("llm.dry_run=true")
    return load_config(data=data, engine=engine, model=model, overrides=sets)
