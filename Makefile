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

PIPELINE_ARGS = --data $(DATA) --engine $(ENGINE) --model $(MODEL) \
	$(if $(RANK),--rank $(RANK)) $(if $(ABLATION),--ablation $(ABLATION)) $(if $(FROM),--from-stage $(FROM)) \
	$(if $(DRY_RUN),--dry-run) $(if $(RERANKER),--set rerank.model=reranker-$(RERANKER)) \
	$(foreach o,$(OVERRIDES),--set $(o))

export PREFECT_HOME ?= $(CURDIR)/cache/prefect
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: ui-deps setup pipeline status compare server deploy test test-slow bench bench-gcl clean-venv

STAMP := $(VENV)/.lagcl-setup

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

pipeline: setup
	$(PY) -m flows.pipeline $(PIPELINE_ARGS)

# Prefect server + UI on http://127.0.0.1:4200 (SQLite under cache/prefect; PREFECT_DB_URL=postgresql+asyncpg://...
# for a shared PostgreSQL database).
PREFECT_PORT ?= 4200
PREFECT_DB_URL ?=
server: setup
	mkdir -p cache/prefect
	$(if $(PREFECT_DB_URL),PREFECT_API_DATABASE_CONNECTION_URL='$(PREFECT_DB_URL)') \
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# Register the deployments of conf/schedules.yaml with the server started by `make server`, and serve them.
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
deploy: setup
	PREFECT_API_URL=$(PREFECT_API_URL) $(PY) -m flows.deploy

status: setup
	$(PY) -m flows.cli status $(PIPELINE_ARGS)

# Table 2 / Table 3 view: every finished run of $(DATA) side by side (levels on, test Recall/NDCG@20)
compare: setup
	$(PY) -m flows.cli compare --data $(DATA)

# Debian's Chromium, for the test that loads the Prefect UI in a headless browser
ui-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup ui-deps
	$(PY) -m pytest -q -m "not slow" --timeout=900

test-slow: setup
	$(PY) -m pytest -q -m slow --timeout=2400

bench: bench-gcl

bench-gcl: setup
	$(PY) -m scripts.bench_gcl

clean-venv:
	rm -rf $(VENV)

# Figure 4: CF + reranker for |C_u| in {0, 5, 10, 20, 50, 100} (SWEEP_MODE=retrain: one reranker per size;
# rescore: one reranker, rescored on larger C_u). Plot + table under cache/<DATA>/sweeps/.
SWEEP_MODE ?= retrain
SWEEP_SIZES ?= 0,5,10,20,50,100
.PHONY: sweep-candidates
sweep-candidates: setup
	$(PY) -m scripts.sweep_candidates $(PIPELINE_ARGS) --mode $(SWEEP_MODE) --sizes $(SWEEP_SIZES)
