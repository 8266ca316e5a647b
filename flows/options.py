"""What a run is: the command-line options every `lagcl` command and `python -m flows.pipeline` share, and the
configuration they make."""

from __future__ import annotations

import argparse

from lagcl.config import Config, load_config
from tasks.base import STAGES


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--engine", default="embedding")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--rank", choices=["on", "off"], default=None)
    p.add_argument("--ablation", choices=["no-data", "no-rank", "no-rerank"], default=None)
    p.add_argument("--from-stage", choices=list(STAGES), default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


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
