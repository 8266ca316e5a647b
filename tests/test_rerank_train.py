"""Reranker training (eq. 14-16): BCE on a one-logit head, LoRA, DeepSpeed ZeRO-2 on the CPU, resume.

The model is a tiny randomly initialised Qwen2 classifier (the architecture of the paper's Qwen2.5-7B) and
a word-level tokenizer built here, so nothing comes from a model hub.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from lagcl.config import LoraSpec, RerankerSpec
from lagcl.rerank.infer import score_texts
from lagcl.rerank.train import deepspeed_config, train_reranker

WORDS = ("user liked disliked candidate drama comedy horror action war romance rank of none movie").split()


def tiny_qwen2(seed: int = 0):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    # Qwen's own end-of-text token: reloaded from disk, AutoTokenizer builds a Qwen2Tokenizer, which uses it
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>", *WORDS, *map(str, range(30))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_labels=1,
                         problem_type="multi_label_classification", tie_word_embeddings=False)
    return Qwen2ForSequenceClassification(config), tokenizer


def toy_pairs(n: int = 32) -> tuple[list[str], list[float]]:
    """Relevant exactly when the candidate's genre is among the liked ones: learnable from the text."""
    texts, labels = [], []
    genres = ["drama", "comedy", "horror", "action"]
    for i in range(n):
        liked, cand = genres[i % 2], genres[(i // 2) % 4]
        texts.append(f"candidate {cand} movie rank {i % 20} liked {liked} {liked} disliked horror")
        labels.append(float(cand == liked))
    return texts, labels


SPEC = RerankerSpec(path="unused", format="compact", max_length=32, batch_size=8, lr=5e-3)


def test_bce_training_lowers_the_loss_and_saves_a_finished_model(tmp_path):
    model, tokenizer = tiny_qwen2()
    texts, labels = toy_pairs()
    before = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(score_texts(model, tokenizer, texts, 16, 32)), torch.tensor(labels)).item()
    res = train_reranker(model, tokenizer, texts, labels, tmp_path, SPEC, epochs=3, seed=0)
    after = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(score_texts(res.model, res.tokenizer, texts, 16, 32)), torch.tensor(labels)).item()
    assert res.global_step == 3 * 4                      # 32 pairs / batch 8, three epochs
    assert after < before
    assert (tmp_path / "model" / "done.json").is_file()
    # a finished training is found, not repeated
    again = train_reranker(*tiny_qwen2(), texts, labels, tmp_path, SPEC, epochs=3, seed=0)
    assert again.skipped and again.global_step == 12
    assert score_texts(again.model, again.tokenizer, texts[:4], 4, 32) == pytest.approx(
        score_texts(res.model, res.tokenizer, texts[:4], 4, 32), abs=1e-5)


def test_lora_trains_only_adapters_and_the_head(tmp_path):
    model, tokenizer = tiny_qwen2()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "score" not in n}
    spec = SPEC.model_copy(update={"lora": LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                                   "gradient_checkpointing": True})   # as reranker-qwen7b trains
    texts, labels = toy_pairs()
    res = train_reranker(model, tokenizer, texts, labels, tmp_path, spec, epochs=1, seed=0)
    assert json.loads((tmp_path / "model" / "done.json").read_text())["lora"] is True
    assert (tmp_path / "model" / "adapter_config.json").is_file()
    trainable = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    base = dict(res.model.base_model.model.named_parameters())
    for name, value in frozen.items():
        key = name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        assert torch.equal(base[key], value), name      # the backbone did not move


def test_deepspeed_zero2_trains_on_the_cpu(tmp_path):
    model, tokenizer = tiny_qwen2()
    texts, labels = toy_pairs(16)
    conf = deepspeed_config("zero2")
    assert conf["zero_optimization"]["stage"] == 2
    res = train_reranker(model, tokenizer, texts, labels, tmp_path, SPEC, epochs=1, seed=0, deepspeed="zero2")
    assert res.global_step == 2
    info = json.loads((tmp_path / "model" / "done.json").read_text())
    assert info["deepspeed"] == "zero2" and info["train_loss"] > 0
    ckpts = list((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert ckpts and any(p.is_dir() for c in ckpts for p in c.glob("global_step*"))   # a DeepSpeed checkpoint
    assert score_texts(res.model, res.tokenizer, texts, 8, 32).shape == (16,)


class StopAfterFirstEpoch(TrainerCallback):
    """Simulates a killed run: the process dies when the second epoch begins (after epoch 1's checkpoint)."""

    def on_epoch_begin(self, args, state, control, **kwargs):
        if state.epoch and state.epoch >= 1:
            raise KeyboardInterrupt("killed")


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    texts, labels = toy_pairs()
    with pytest.raises(KeyboardInterrupt):
        train_reranker(*tiny_qwen2(), texts, labels, tmp_path, SPEC, epochs=2, seed=0,
                       callbacks=[StopAfterFirstEpoch()])
    assert (tmp_path / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "model" / "done.json").exists()

    steps_run = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    res = train_reranker(*tiny_qwen2(), texts, labels, tmp_path, SPEC, epochs=2, seed=0, callbacks=[Count()])
    assert res.resumed_from.endswith("checkpoint-4")
    assert steps_run == [5, 6, 7, 8]                    # only the second epoch ran
    assert res.global_step == 8


def test_the_fresh_head_depends_on_the_seed_not_on_what_ran_before_in_the_process():
    """A resumed pipeline trains the reranker in a process where the earlier stages did not run (they are
    cached): its initial head must be the one an uninterrupted run draws (scripts/chaos.py found this)."""
    from lagcl.config import load_config
    from lagcl.rerank.train import load_reranker

    spec = load_config().rerank.spec  # the CPU default: all-MiniLM-L6-v2 + a new one-logit head
    first, _ = load_reranker(spec, seed=7)
    torch.rand(1000)  # an earlier stage drew random numbers in the same process
    second, _ = load_reranker(spec, seed=7)
    other, _ = load_reranker(spec, seed=8)
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
