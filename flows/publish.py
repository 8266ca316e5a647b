"""Per run, in the Prefect UI: a table artifact with the metrics, a Markdown artifact with the report."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lagcl.artifacts import read_manifest
from lagcl.chain.text import format_chain
from lagcl.meta import Headline, RequestsMeta, meta_of
from tasks.base import Plan


def publish_artifacts(plan: Plan, done: dict[str, str], changes: list[str] | None = None) -> None:
    """Per run, in the Prefect UI: a table artifact with the metrics, a Markdown artifact with the report."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"lagcl-{plan.cfg.data.name}".lower())
    metric_rows: list[dict] = []
    lines = [f"# LAGCL4Rec run: {plan.cfg.data.name}", "",
             f"engine `{plan.cfg.engine.name}`, backbone `{plan.cfg.gcl.backbone}`, rank level "
             f"{'on' if plan.cfg.rank.enabled else 'off'}, ablation `{plan.cfg.pipeline.ablation}`, seed {plan.cfg.seed}",
             "", "| stage | seconds | rows | spend (USD) | folder |", "|---|---:|---:|---:|---|"]
    if changes:
        lines[4:4] = ["## What changed", "", "```", *changes, "```", ""]
    pngs: list[Path] = []
    for stage, path in done.items():
        folder = Path(path)
        manifest = read_manifest(folder) or {}
        usage = RequestsMeta.of(manifest.get("meta", {})).usage
        lines.append(f"| {stage} | {manifest.get('seconds', 0):.1f} | {sum(manifest.get('rows', {}).values()):,} | "
                     f"{usage.get('cost_usd', 0.0):.2f} | `{folder}` |")
        if (folder / "metrics.parquet").is_file():
            for row in pl.read_parquet(folder / "metrics.parquet").iter_rows(named=True):
                metric_rows.append({"stage": stage, **{k: (round(v, 5) if isinstance(v, float) else v)
                                                       for k, v in row.items()}})
        pngs += sorted(folder.glob("*.png"))
    report = Path(done["evaluate"]) / "report.md" if "evaluate" in done else None
    if report is not None and report.is_file():
        lines += ["", report.read_text()]
    elif "gcl" in done:
        h = Headline.of("gcl", meta_of(done["gcl"]))
        levels = h.levels if h is not None else []
        lines += ["", "## What each level bought", "", "```", *format_chain(levels), "```"]
    if pngs:
        lines += ["", "## Plots", *[f"- [{p.name}](file://{p})" for p in pngs]]
    if metric_rows:
        create_table_artifact(key=f"{key}-metrics", table=metric_rows,
                              description=f"metrics of {plan.cfg.data.name}")
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines),
                             description=f"report of {plan.cfg.data.name}")
