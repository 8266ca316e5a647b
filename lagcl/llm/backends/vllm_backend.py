"""In-process offline batch generation with vLLM (GPU only; the `vllm` extra, imported only when this
engine is chosen). Each request carries its reply's JSON schema, which vLLM enforces by guided
decoding, so replies are valid JSON by construction (ids and ranges are still checked by the parser).

The request building (`build_chat`, `sampling_options`) and output parsing (`parse_output`) are plain
functions, tested without vLLM; `scripts/gpu_smoke.sh` runs the real thing on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any, Sequence

from lagcl.errors import LLMError
from lagcl.llm.backends.base import Backend
from lagcl.llm.types import Completion, LLMRequest


def build_chat(request: LLMRequest) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    return messages + [{"role": role, "content": text} for role, text in request.messages]


def sampling_options(request: LLMRequest, seed: int | None = None) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams`, plus `json_schema` for guided decoding."""
    opts: dict[str, Any] = {"temperature": request.temperature, "max_tokens": request.max_tokens}
    if seed is not None:
        opts["seed"] = seed
    if request.json_schema is not None:
        opts["json_schema"] = request.json_schema
    return opts


def parse_output(output: Any) -> Completion:
    """A `vllm.RequestOutput` -> Completion (first sample; tokens counted from the token ids)."""
    first = output.outputs[0]
    return Completion(text=first.text, input_tokens=len(output.prompt_token_ids or ()),
                      output_tokens=len(first.token_ids or ()), finish_reason=str(first.finish_reason or ""))


def _sampling_params(opts: dict[str, Any]) -> Any:
    import vllm

    opts = dict(opts)
    schema = opts.pop("json_schema", None)
    if schema is None:
        return vllm.SamplingParams(**opts)
    try:  # vLLM >= 0.11
        from vllm.sampling_params import StructuredOutputsParams

        return vllm.SamplingParams(structured_outputs=StructuredOutputsParams(json=schema), **opts)
    except ImportError:  # older vLLM
        from vllm.sampling_params import GuidedDecodingParams

        return vllm.SamplingParams(guided_decoding=GuidedDecodingParams(json=schema), **opts)


class VLLMBackend(Backend):
    name = "vllm"
    local = True

    def __init__(self, model: str, dtype: str = "auto", extra: dict[str, Any] | None = None) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise LLMError("the vllm engine needs the `vllm` package, which is not installed: on a GPU machine "
                           "run `pip install -e '.[vllm]'` (vLLM pins its own torch; use a separate venv, see "
                           "scripts/gpu_smoke.sh), or use engine=openai against a vLLM server")
        self.model = model
        self.dtype = dtype
        self.extra = dict(extra or {})
        self._llm: Any = None
        self._lock = threading.Lock()

    def cache_params(self) -> dict[str, Any]:
        return {"guided": True}

    def complete_batch(self, requests: Sequence[LLMRequest]) -> list[Completion | Exception]:
        import vllm

        with self._lock:
            if self._llm is None:
                # extra: any vllm.LLM argument (gpu_memory_utilization, max_model_len, tokenizer, ...)
                self._llm = vllm.LLM(model=self.model, dtype=self.dtype, **self.extra)
            params = [_sampling_params(sampling_options(r)) for r in requests]
            try:
                outputs = self._llm.chat([build_chat(r) for r in requests], sampling_params=params, use_tqdm=False)
            except Exception as exc:
                return [exc] * len(requests)
        return [parse_output(o) for o in outputs]
