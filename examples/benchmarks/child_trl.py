"""One TRL ``SFTTrainer`` run in a fresh process: ``python child_trl.py SPEC.json RESULT.json``.

The data is read from the same JSONL file as ift's (``datasets.load_dataset("json")``), the model and
tokenizer from the same folder; TRL prepares the prompt/completion rows itself (EOS appended, completion-only
loss). The probe measures tokens, steps and memory the same way as in the ift child; a ``TrainerCallback``
times the steps too, as a cross-check.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import accelerate  # noqa: E402, F401
import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import Probe  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.ends.append(time.perf_counter())


class BenchSFTTrainer(SFTTrainer):
    """TRL's trainer with three additions that change nothing it computes: optional data order as given
    (for the parity check), the per-step loss and trainable tokens recorded, and dataset preparation timed."""

    bench_shuffle = True

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.bench_losses: list[float] = []
        self.bench_trainable: list[int] = []
        self.bench_prep_s = 0.0
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        try:
            return super()._prepare_dataset(*args, **kwargs)
        finally:
            self.bench_prep_s += time.perf_counter() - started

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
        if not self.bench_shuffle:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001, ANN201
        self.bench_trainable.append(int((inputs["labels"][:, 1:] != -100).sum()))
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.bench_losses.append(float(loss))
        return loss


def checkpointing_as_ift(spec: dict) -> bool:
    """The spec's ``gradient_checkpointing``, or what ift's ``gradient_checkpointing = "auto"`` picks for
    this model, precision and device (ift.batching.checkpoints_by_default)."""
    explicit = spec["settings"]["extra"].get("gradient_checkpointing")
    if explicit is not None:
        return bool(explicit)
    from types import SimpleNamespace

    from transformers import AutoConfig

    from ift.batching import checkpoints_by_default

    model = SimpleNamespace(config=AutoConfig.from_pretrained(spec["model_dir"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    element_bytes = 2 if spec.get("precision") == "bf16" else 4
    return checkpoints_by_default(model, device, element_bytes, spec["settings"]["max_length"])


def trl_config(spec: dict, output_dir: Path) -> SFTConfig:
    s = spec["settings"]
    mode = s["trl_mode"]
    out_of_the_box = s["extra"].get("trl_out_of_the_box", False)
    kwargs: dict = {}
    if out_of_the_box and not torch.cuda.is_available():
        kwargs.update(use_cpu=True)  # TRL's default bf16=True is refused on a CPU unless use_cpu is set
    if not out_of_the_box:
        # Same numerics as ift on this device: no bf16 autocast on a CPU (TRL's default is bf16=True even
        # there), and gradient checkpointing exactly when ift uses it: as the spec says, or else as ift's
        # "auto" resolves it for this model and device (TRL's own default is always on).
        kwargs.update(
            bf16=spec.get("precision") == "bf16",
            gradient_checkpointing=checkpointing_as_ift(spec),
        )
    if mode == "packing":
        kwargs.update(packing=True)  # TRL's default strategy: "bfd" (implies padding-free batches)
    elif mode == "padding_free":
        kwargs.update(padding_free=True, max_length=None)  # TRL requires max_length=None here; data fits anyway
    elif mode == "group_by_length":
        kwargs.update(train_sampling_strategy="group_by_length")
    elif mode != "default":
        raise ValueError(f"unknown TRL mode {mode!r}")
    kwargs.setdefault("max_length", s["max_length"])
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=s["steps"],
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=s["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=s["weight_decay"],
        adam_beta1=s["adam_betas"][0],
        adam_beta2=s["adam_betas"][1],
        max_grad_norm=s["max_grad_norm"],
        seed=s["seed"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **kwargs,
    )


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["work_dir"])
    out.mkdir(parents=True, exist_ok=True)
    probe = Probe(spec["pad_id"])
    probe.install(spec["model_dir"])
    timer = StepTimer()
    t_imported = time.perf_counter()
    t0 = time.perf_counter()  # raw rows are read from here on
    datasets.disable_progress_bars()
    dataset = datasets.load_dataset("json", data_files=spec["data_path"], split="train")
    load_s = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    BenchSFTTrainer.bench_shuffle = spec["settings"]["shuffle"]
    lora = spec["settings"]["extra"].get("lora")
    peft_config = None
    if lora:  # the same LoRA as ift's [model.peft] (all linear layers but the LM head)
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    trainer = BenchSFTTrainer(
        model=spec["model_dir"],
        args=trl_config(spec, out / "trainer"),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
        peft_config=peft_config,
    )
    trainer.train()
    t_end = time.perf_counter()
    summary = probe.summary(t0, spec["warmup"])
    warmup = spec["warmup"]
    callback_s = timer.ends[-1] - timer.ends[warmup - 1] if len(timer.ends) > warmup else None
    args = trainer.args
    result = {
        "side": "trl",
        "import_s": t_imported - T_START,
        "total_s": t_end - t0,
        "threads": torch.get_num_threads(),
        **summary,
        "losses": trainer.bench_losses,
        "trainable_tokens": trainer.bench_trainable,
        "data_prep_s": load_s + trainer.bench_prep_s,
        "reported": {
            "callback_tokens_per_s": summary["timed_real_tokens"] / callback_s if callback_s else None,
            "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing,
            "padding_free": trainer.padding_free,
            "packing": args.packing,
            "packing_strategy": args.packing_strategy,
            "optim": str(args.optim),
            "train_sampling_strategy": args.train_sampling_strategy,
        },
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "accelerate": accelerate.__version__,
            "datasets": datasets.__version__,
        },
    }
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
