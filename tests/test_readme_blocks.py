"""scripts/readme_blocks.py (`make readme`): README's blocks that quote a run or the configuration are rewritten
from them, so they cannot drift."""

from __future__ import annotations

import pytest
import yaml

from scripts.readme_blocks import Run, deployments_block, precision_block, rank_block, replace_blocks
from tasks.base import REPO_ROOT

TEXT = """# Guide
Intro stays.
<!-- BEGIN:chain -->
old chain line 1
old chain line 2
<!-- END:chain -->
It has <!-- BEGIN:count -->3<!-- END:count --> deployments.
"""


def test_marked_blocks_are_replaced_and_everything_else_is_kept():
    new = replace_blocks(TEXT, {"chain": "new line\n", "count": "4"})
    assert new == TEXT.replace("old chain line 1\nold chain line 2", "new line").replace(
        "-->3<!--", "-->4<!--")
    assert replace_blocks(new, {"chain": "new line", "count": "4"}) == new  # a second pass changes nothing


def test_a_marker_without_a_generator_or_a_generator_without_a_marker_is_an_error():
    with pytest.raises(ValueError, match="block 'count' has no generator"):
        replace_blocks(TEXT, {"chain": "x"})
    with pytest.raises(ValueError, match="no marked block for other"):
        replace_blocks(TEXT, {"chain": "x", "count": "1", "other": "y"})


def test_unbalanced_or_crossed_markers_are_errors():
    with pytest.raises(ValueError, match="unbalanced"):
        replace_blocks("<!-- BEGIN:a --> x", {"a": "y"})
    with pytest.raises(ValueError, match="out of order"):
        replace_blocks("<!-- BEGIN:a --> x <!-- END:b -->", {"a": "y"})


def test_the_deployments_block_counts_and_names_every_entry_of_conf_schedules():
    entries = yaml.safe_load((REPO_ROOT / "conf" / "schedules.yaml").read_text())["deployments"]
    block = deployments_block(REPO_ROOT / "conf" / "schedules.yaml")
    assert block.startswith(f"{len(entries)} deployments, one per entry of `conf/schedules.yaml`")
    assert len(entries) == 4 and all(f"`{d['name']}` (`{d['cron']}`" in block for d in entries)
    assert block.count(", paused)") == sum(bool(d.get("paused")) for d in entries)


def test_readmes_deployments_block_equals_conf():
    readme = (REPO_ROOT / "README.md").read_text()
    block = deployments_block(REPO_ROOT / "conf" / "schedules.yaml")
    assert f"<!-- BEGIN:deployments -->{block}<!-- END:deployments -->" in readme


def fake_run(gcl: dict, levels: list[dict]) -> Run:
    run = Run.__new__(Run)
    run.folders, run.meta = {}, {"gcl": gcl, "evaluate": {"levels": levels}}
    return run


def test_the_run_blocks_quote_the_runs_own_figures():
    control = {"level": "control", "kept": True, "trained": True, "valid_recall@20": 0.40, "test_recall@20": 0.50}
    rank = {"level": "rank", "kept": False, "trained": True, "valid_recall@20": 0.39, "test_recall@20": 0.51,
            "valid_recall@20_p": 0.0281, "test_recall@20_p": 0.0004}
    run = fake_run({"data_check": {"engine_precision": 0.0304, "control_precision": 0.0808, "users": 495}},
                   [control, rank])
    assert rank_block(run) == ("the default run turns down the rank level (validation Recall@20 -2.5%, p = 0.028; "
                               "test +2.0%, p = <0.001)")
    assert precision_block(run) == ("its augmented positives are 3.04% precise on the validation positives of 495 "
                                    "cold users against the control's 8.08% (ML-100K)")
