"""Constrained decoding for the in-process transformers engine: at every step only the tokens that keep the reply a
valid prefix of the request's JSON schema may be chosen, so even a small base model returns a reply that parses.

The same guarantee a server gives with `response_format: json_schema` (llama.cpp's grammar, vLLM's structured
outputs), here from lm-format-enforcer's character-level JSON-schema parser walked over the tokenizer's vocabulary
(its TokenEnforcer; its transformers integration imports names transformers 5 no longer has, so the vocabulary is
read here). `engine.extra.response_format`: json_schema (the request's schema), json_object (any JSON object) or
none (unconstrained; replies are parsed and repaired as they come).
"""

from __future__ import annotations

from typing import Any, Sequence

from lagcl.errors import LLMError

RESPONSE_FORMATS = ("json_schema", "json_object", "none")


def check_response_format(value: str) -> str:
    if value not in RESPONSE_FORMATS:
        raise LLMError(f"engine.extra.response_format={value!r} is not one of {', '.join(RESPONSE_FORMATS)}")
    if value != "none":
        try:
            import lmformatenforcer  # noqa: F401
        except ImportError:
            raise LLMError(f"engine.extra.response_format={value} on the transformers engine needs lm-format-enforcer:"
                           f" pip install -e '.[local-llm]', or set engine.extra.response_format=none") from None
    return value


def vocabulary(tokenizer: Any, eos_token_ids: Sequence[int]) -> Any:
    """The tokenizer as the enforcer sees it: (id, text, starts a word) for every regular token. A token's text is
    read after a "0" so that a leading space the tokenizer would strip alone is kept. Built once per model."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    after_zero = tokenizer.batch_decode([[zero, i] for i in ids])
    alone = tokenizer.batch_decode([[i] for i in ids])
    # left out: a token that is part of a character's bytes (byte fallback, byte-level BPE) decodes to U+FFFD alone,
    # and the parser, seeing no character, would never reach a string's maxLength (a character missing from the
    # vocabulary cannot then be written); a token holding a control character (tab, newline) is whitespace JSON
    # does not need, and the enforcer's shortcut for string contents would let it into a string, where the JSON
    # standard (and the parsers here) reject it unescaped
    regular = [(i, a[1:], len(a) - 1 > len(b)) for i, a, b in zip(ids, after_zero, alone)
               if "\ufffd" not in b and not any(c < " " or c == "\x7f" for c in b)]

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens).rstrip("\ufffd")  # a partial multi-byte character is not text yet

    # bitmask: the allowed set comes back as packed bits, unpacked with tensor ops (a list of ~260k ids per step
    # inside a string was most of the cost)
    return TokenEnforcerTokenizerData(regular, decode, list(eos_token_ids), True, len(tokenizer))


def enforceable(schema: Any) -> Any:
    """`schema` as the enforcer can hold a model to it. Its number parser bounds neither digits nor range, and a
    small model writes 5.5555... until max_tokens: a number is asked for as a string of a few digits instead,
    within [0, 1] or [0, 10] where the schema says so (the reply parsers read a number written in a string)."""
    if isinstance(schema, list):
        return [enforceable(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: enforceable(v) for k, v in schema.items()}
    if out.get("type") in ("number", "integer"):
        bounds = (out.get("minimum"), out.get("maximum"))
        frac = "" if out["type"] == "integer" else "([.][0-9]{1,2})?"
        pattern = {(0, 10): f"(10|[0-9]){frac}", (0, 1): f"(1|0){frac}"}.get(bounds, f"-?[0-9]{{1,6}}{frac}")
        return {"type": "string", "pattern": pattern}
    return out


class SchemaConstraint:
    """A logits processor for `model.generate`: row b of the batch follows `schemas[b]` (None: any JSON).
    Each row has its own enforcer, which recognises its prompt on the first step and tracks what was generated
    after it."""

    def __init__(self, vocab: Any, schemas: Sequence[dict[str, Any] | None]) -> None:
        from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser, TokenEnforcer

        # keys in the schema's order (as llama.cpp's grammar has them) and at most 2 whitespace characters in a
        # row: a small model otherwise spends its tokens on indentation and blank lines between the values
        self.enforcers = [TokenEnforcer(vocab, JsonSchemaParser(enforceable(schema))) for schema in schemas]
        for enforcer in self.enforcers:  # after the enforcer, which sets a config of its own (the alphabet only)
            enforcer.root_parser.config = CharacterLevelParserConfig(
                alphabet=vocab.tokenizer_alphabet, max_consecutive_whitespaces=2, force_json_field_order=True)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        n = scores.shape[-1]
        shifts = torch.arange(32, dtype=torch.int32)
        allowed = torch.zeros(scores.shape, dtype=torch.bool)
        for row, (enforcer, tokens) in enumerate(zip(self.enforcers, input_ids.tolist())):
            words = enforcer.get_allowed_tokens(tokens).allowed_tokens  # int32, bit t % 32 of word t // 32
            bits = ((words.unsqueeze(1) >> shifts) & 1).flatten().bool()
            allowed[row, :min(n, bits.numel())] = bits[:n]
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
