"""The command line as a user meets it: every option of every command has help with its values and default, a
command takes only the options it uses, `--model` takes backbones only, `--n` a positive integer (also through
`make recommend`), a finished run's last line names its product and the command that shows it, and every process
the project starts runs with Prefect's analytics off."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from flows.options import build_config
from flows.summary import product_lines, recommend_command
from lagcl.config import backbone_names, load_config
from lagcl.errors import ConfigError
from tasks.base import make_plan

REPO = Path(__file__).resolve().parent.parent
from test_recommend import N_USERS, finished_run


def exits_2(argv: list[str], capsys) -> str:
    """argparse's refusal: exit status 2 and the message on stderr."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def options(parser) -> dict[str, object]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings and a.dest != "help"}


# --- help ----------------------------------------------------------------------------------------

def test_every_option_of_every_command_has_help_naming_its_default_and_its_choices():
    _, subs = cli.parsers()
    for name, parser in subs.items():
        help_text = " ".join(parser.format_help().split())  # argparse wraps lines
        for opt, action in options(parser).items():
            assert "default" in (action.help or "") or action.required, (name, opt)
            for choice in action.choices or ():  # argparse may wrap a name at its hyphen
                assert choice in help_text.replace("- ", "-"), (name, opt, choice)
        assert "--data NAME dataset: conf/data/<NAME>.yaml, one of" in help_text and "(default: ml-100k;" in help_text
    run = options(subs["run"])
    assert all(b in run["--model"].help for b in backbone_names())
    assert all(s in run["--from-stage"].help for s in ("prepare", "gcl", "evaluate"))


def test_each_command_takes_only_the_options_it_uses():
    _, subs = cli.parsers()
    config = {"--data", "--set", "--engine", "--model", "--rank", "--ablation"}
    assert set(options(subs["run"])) == config | {"--from-stage", "--dry-run"}
    assert set(options(subs["status"])) == config
    assert set(options(subs["recommend"])) == config | {"--user", "--n"}
    assert set(options(subs["compare"])) == {"--data", "--set"}


@pytest.mark.parametrize("argv, option", [
    (["status", "--dry-run"], "--dry-run"), (["status", "--from-stage", "gcl"], "--from-stage"),
    (["recommend", "--user", "196", "--dry-run"], "--dry-run"), (["compare", "--from-stage=gcl"], "--from-stage"),
    (["compare", "--model", "xsimgcl"], "--model")])
def test_a_run_only_option_on_another_command_is_refused_naming_what_that_command_takes(argv, option, capsys):
    err = exits_2(argv, capsys)
    assert f"`lagcl {argv[0]}` does not use {option} (options of `lagcl run`); it takes --" in err


def test_an_unknown_option_is_refused_as_unrecognized(capsys):
    assert "unrecognized arguments: --bogus 3" in exits_2(["status", "--bogus", "3"], capsys)


# --- --model: backbones only ----------------------------------------------------------------------

def test_a_reranker_preset_as_the_model_is_refused_naming_the_backbones_and_how_rerankers_are_chosen(capsys):
    err = exits_2(["run", "--model", "reranker-cpu"], capsys)
    assert ("model 'reranker-cpu' is a reranker preset, not a backbone: MODEL= / --model chooses one of "
            "lightgcl, lightgcn, mf, sgl, xsimgcl, xsimgcl-official; rerankers are chosen with RERANKER=cpu (make) or "
            "--set rerank.model=reranker-cpu") in err
    assert "reranker preset" in exits_2(["status", "--model", "reranker-qwen7b"], capsys)
    with pytest.raises(ConfigError, match="'reranker-cpu' is a reranker preset, not a backbone"):
        load_config(model="reranker-cpu")  # the one loader refuses it too (flows.tables, deployments)
    with pytest.raises(ConfigError, match="unknown model 'gcn': choose one of lightgcl, lightgcn, mf, sgl, xsimgcl, xsimgcl-official"):
        load_config(model="gcn")
    assert backbone_names() == ["lightgcl", "lightgcn", "mf", "sgl", "xsimgcl", "xsimgcl-official"]


# --- --n / N= -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, says", [("0", "N must be a positive integer (1 or more), got 0"),
                                     ("-3", "N must be a positive integer (1 or more), got -3"),
                                     ("ten", "'ten' is not a whole number: N must be a positive integer")])
def test_recommend_refuses_an_n_that_is_not_a_positive_integer_with_exit_2(n, says, capsys):
    err = exits_2(["recommend", "--user", "196", "--n", n], capsys)
    assert f"lagcl recommend: error: argument --n: {says}" in err


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_recommend_passes_n_through_as_given_and_status_gets_no_run_only_options():
    def dry(*args: str) -> str:  # make -n prints the commands without running any of them
        # under `make test` the parent make's MAKEFLAGS would add "Entering/Leaving directory" lines
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        out = subprocess.run(["make", "-n", "--no-print-directory", *args, "VENV=/nonexistent"], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[-1]

    assert "flows.cli recommend --user '196' --n '0' --data ml-100k" in dry("recommend", "USER=196", "N=0")
    assert "--n '-3'" in dry("recommend", "USER=196", "N=-3")
    assert "--n" not in dry("recommend", "USER=196")
    status = dry("status", "FROM=gcl", "DRY_RUN=1", "MODEL=sgl", "RANK=off")
    assert "flows.cli status --data ml-100k --engine embedding --model sgl --rank off" in status
    assert "--from-stage" not in status and "--dry-run" not in status
    pipeline = dry("pipeline", "FROM=gcl", "DRY_RUN=1")
    assert "--from-stage gcl" in pipeline and "--dry-run" in pipeline
    assert dry("server").endswith("prefect server start --host 127.0.0.1 --port 4200 --analytics-off")


# --- the run's last line --------------------------------------------------------------------------

def test_a_finished_run_ends_naming_its_recommendations_and_a_recommend_command_for_one_of_its_users(tmp_path):
    plan, _, ev = finished_run(tmp_path)
    done = {s: str(plan.ref(s).path) for s in ("prepare", "profiles", "gcl")} | {"evaluate": str(ev)}
    [line] = product_lines(plan, done)
    head, command = line.split("; try: ")
    assert head == (f"recommendations: {ev / 'recommendations.parquet'} (top 20 for each of {N_USERS} users, "
                    "rated items left out: the 'dislikes masked' protocol)")
    # the fixture's run turned stages off with --set: the command says its settings are needed too
    assert command == ("make recommend USER=U0 N=10 OVERRIDES=cache_dir=" + str(tmp_path / "cache") + " (with this "
                       "run's other settings in RERANKER= / OVERRIDES=)")


def test_the_recommend_command_carries_the_make_variables_that_find_this_very_run(tmp_path):
    cache = f"cache_dir={tmp_path}"
    plan = make_plan(build_config("ml-100k", "embedding", "xsimgcl", "off", "no-rerank", [cache]))
    assert recommend_command(plan, "196", 10) == (f"make recommend USER=196 N=10 MODEL=xsimgcl ABLATION=no-rerank "
                                                  f"RANK=off OVERRIDES={cache}")
    plan = make_plan(load_config())
    assert recommend_command(plan, "user 7", 5) == "make recommend USER='user 7' N=5"


# --- telemetry ------------------------------------------------------------------------------------

def test_every_process_the_project_starts_has_prefect_analytics_off():
    """A process that imports `flows` (every entry point does) with none of the settings in its environment:
    it, and a process it starts (a temporary Prefect server, a Dask worker, the DGL stage's interpreter all
    inherit its environment), read DO_NOT_TRACK=1 and Prefect's server analytics off."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    child = ("import os; from prefect.settings import get_current_settings as s; "
             "print(os.environ.get('DO_NOT_TRACK'), s().server.analytics_enabled)")
    parent = (f"import flows, subprocess, sys; from prefect.settings import get_current_settings as s; "
              f"print(s().server.analytics_enabled); "
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)")
    out = subprocess.run([sys.executable, "-c", parent], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1", "False"]
