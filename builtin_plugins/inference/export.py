"""``ift export``: a run's model as a standalone Hugging Face folder (LoRA, AdaLoRA or IA3 merged into its
base), optionally with an int8 copy for CPU inference whose size and metric change are measured on the run's
eval split. Prompt- and prefix-tuning runs are refused: their virtual tokens are extra inputs, not a change of
weights, so nothing can be merged and the run's ``model/`` folder is already the thing to ship.

The export is assembled in a hidden temporary folder beside ``--output`` and renamed into place only when
every file (weights, tokenizer, README, ``export_report.json``) is written: a folder named like the output
is always a finished export.

Layout::

    OUTPUT/                 loadable with AutoModelForCausalLM.from_pretrained(OUTPUT) (or the adapter's class)
      config.json  model.safetensors  generation_config.json  tokenizer files
      README.md             run, template hash, merge, prompt format, eval table
      export_report.json    the same facts as JSON
      int8/                 with --quantize int8: config, tokenizer, model_int8.pt, quantization.json
      <name>-<quant>.gguf   with --gguf: llama.cpp / Ollama file (tokenizer and chat template in its metadata)
      Modelfile             with --gguf: Ollama's recipe for it (ollama create NAME -f Modelfile)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.inference.export_card import model_card
from ift.builtin_plugins.inference.quantize import (
    QUANTIZATION_FILE,
    WEIGHTS_FILE,
    quantize_int8,
    save_quantized,
    weights_size,
)
from ift.builtin_plugins.inference.runs import TrainedRun, open_run, read_records, read_run
from ift.builtin_plugins.peft_methods import VIRTUAL_TOKEN_METHODS

PROBE_EXAMPLES = 4


def export_run(
    run_dir: Path,
    host: Any,
    *,
    output: Path | None = None,
    merge: bool = False,
    quantize: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    gguf: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export ``run_dir``'s model; returns the report also written to ``OUTPUT/export_report.json``.

    A peft run (LoRA, AdaLoRA, IA3) needs ``merge`` (the export must stand alone); a fully fine-tuned run refuses
    it, since its model is already standalone and there is nothing to merge (export it without ``--merge``). A
    prompt- or prefix-tuning run is refused either way (see :func:`unmergeable_message`). ``gguf`` (a quant:
    ``f16``, ``q8_0``) also writes ``<name>-<quant>.gguf`` and an Ollama ``Modelfile``; it merges a peft adapter
    without needing ``merge``.
    """
    run_dir = Path(run_dir)
    output = Path(output) if output is not None else run_dir / "export"
    read_run(run_dir)  # not a finished run: say so before anything else
    _check_output(run_dir, output, overwrite)
    run = open_run(run_dir, host, device=device)
    method = peft_method(run.model)
    peft = method is not None
    if method is not None and method in VIRTUAL_TOKEN_METHODS:
        raise ift.RunError(unmergeable_message(run_dir, run.model_dir, method))
    if gguf and peft:
        merge = True  # a GGUF file holds one set of weights: the adapter is merged first
    if merge and not peft:
        raise ift.RunError(
            f"--merge: {run_dir} was fully fine-tuned ({run.model_dir} holds complete weights), so "
            "there are no LoRA weights to merge; run `ift export` without --merge to copy it as a "
            "standalone folder (with --quantize int8 for a CPU copy)"
        )
    if peft and not merge:
        raise ift.RunError(
            f"{run_dir} trained a {method} adapter: pass --merge to fold it into the base model, so the "
            "export loads with plain transformers"
        )
    records = _records(run_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's private 0700 would otherwise stay on the finished export
    try:
        report = _build(run, tmp, records, merge=merge, quantize=quantize, host=host, echo=echo, gguf=gguf)
        report["output"] = str(output)
        (tmp / "README.md").write_text(model_card(run, report), encoding="utf-8")
        (tmp / "export_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _commit(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def peft_method(model: Any) -> str | None:
    """The peft method a loaded model carries, as the recipe names it (``lora``, ``ia3``, ``prompt-tuning``...),
    or None for a plain model. Decided by peft's own config, not by which methods the model happens to have:
    prompt- and prefix-tuning models have no ``merge_and_unload`` and are still peft models."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    config = configs.get(getattr(model, "active_adapter", None)) or next(iter(configs.values()))
    kind = getattr(config, "peft_type", None)
    return str(getattr(kind, "value", kind) or "unknown").lower().replace("_", "-")  # PROMPT_TUNING: prompt-tuning


def unmergeable_message(run_dir: Path, model_dir: Path, method: str) -> str:
    """Why a virtual-token run has no standalone export, and what to load instead (one line)."""
    base = model_dir / "base_model"
    base_text = (
        f"with its base from {base}"
        if base.is_dir()
        else "with its base model (adapter_config.json: base_model_name_or_path)"
    )
    return (
        f"{run_dir} trained a {method} adapter: its virtual tokens are extra inputs prepended to every "
        "sequence, not a change of the model's weights, so they cannot be merged into the weights and there "
        f"is no standalone export (with or without --merge); load {model_dir} with peft instead "
        f"(PeftModel.from_pretrained, {base_text}), or use it with `ift generate {run_dir}`"
    )


def _build(
    run: TrainedRun,
    folder: Path,
    records: list[ift.InstructionRecord],
    *,
    merge: bool,
    quantize: str | None,
    host: Any,
    echo: Callable[[str], None],
    gguf: str | None = None,
) -> dict[str, Any]:
    import torch

    report: dict[str, Any] = {
        "run": str(run.run_dir.resolve()),
        "run_name": run.name,
        "ift": ift.__version__,
        "torch": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "adapter": run.adapter.name,
        "template": {"name": run.resolved["template"].get("name"), "hash": run.renderer.template_hash()},
        "base_model": (run.manifest.get("model") or {}).get("summary"),
        "merge": None,
        "int8": None,
        "eval": None,
        "gguf": None,
    }
    model = run.model
    if merge:
        echo(f"merging the {peft_method(run.model)} weights into the base model ...")
        model, report["merge"] = merge_checked(run, records)
    run.adapter.save(model, run.tokenizer, folder)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    report["export"] = {"path": ".", "dtype": dtype, "weights_bytes": weights_size(folder)}
    if not quantize and not gguf:
        return report
    evaluation: dict[str, Any] = {"records": len(records), "metrics": list(run.resolved["eval"]["metrics"])}
    if records and evaluation["metrics"]:
        echo(f"evaluating the export on {len(records)} eval records ...")
        evaluation["export"] = evaluate(run, model, records, host, stage="export")
    if gguf:
        from ift.builtin_plugins.gguf.export import export_gguf

        batch = _probe_batch(run, records)
        scored = "export" in evaluation

        def probe(candidate: Any, probe_batch: dict[str, Any] | None = batch) -> Any:
            return _logits(candidate, probe_batch) if probe_batch is not None else None

        report["gguf"] = export_gguf(
            run,
            model,
            folder,
            quant=gguf,
            echo=echo,
            probe=probe if batch is not None else None,
            evaluate=(lambda m, stage: evaluate(run, m, records, host, stage=stage)) if scored else None,
        )
        if scored:
            measured = report["gguf"]["check"]["eval"]
            report["gguf"]["check"]["change"] = {
                k: _delta(measured.get(k), v) for k, v in evaluation["export"].items() if k != "n"
            }
        report["eval"] = evaluation
    if not quantize:
        return report
    echo("quantizing Linear layers to int8 (torch dynamic quantization) ...")
    quantized = quantize_int8(model)  # in place: the full-precision model is saved and measured already
    int8 = folder / "int8"
    int8.mkdir()
    save_quantized(quantized, run.tokenizer, int8, source=report["run"])
    info = json.loads((int8 / QUANTIZATION_FILE).read_text())
    int8_bytes = (int8 / WEIGHTS_FILE).stat().st_size
    from_disk = True
    try:  # measure what is shipped: the copy as the adapter loads it back
        quantized, _ = run.adapter.load_trained(int8)
    except (ift.RunError, NotImplementedError, OSError) as exc:
        from_disk = False
        echo(f"note: the {run.adapter.name!r} adapter cannot load the int8 copy ({exc}); measuring it in memory")
    report["int8"] = {
        "path": "int8",
        "weights_bytes": int8_bytes,
        "quantized_layers": info["quantized_layers"],
        "size_ratio": round(int8_bytes / max(report["export"]["weights_bytes"], 1), 4),
        "loadable_by_adapter": from_disk,
    }
    if "export" in evaluation:
        echo("evaluating the int8 copy on the CPU ...")
        evaluation["int8"] = evaluate(run, quantized, records, host, stage="int8")
        evaluation["change"] = {
            k: _delta(evaluation["int8"].get(k), v) for k, v in evaluation["export"].items() if k != "n"
        }
        final = _read_final(run.run_dir)
        if final:
            evaluation["run_final"] = final
    report["eval"] = evaluation
    return report


def merge_checked(run: TrainedRun, records: list[ift.InstructionRecord]) -> tuple[Any, dict[str, Any]]:
    """``merge_and_unload`` the run's peft model, and measure how far the merged model's logits are from base +
    adapter on a few eval examples (float rounding only, when the merge is right)."""
    import torch

    batch = _probe_batch(run, records)
    before = _logits(run.model, batch) if batch is not None else None
    try:
        merged = run.model.merge_and_unload()
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ift.RunError(f"peft cannot merge this adapter into its base: {exc}") from None
    peft_section = run.resolved.get("model", {}).get("peft") or {}
    info: dict[str, Any] = {
        "method": peft_section.get("method") or peft_method(run.model) or "lora",
        "r": peft_section.get("r", peft_section.get("init_r")),
        "alpha": peft_section.get("alpha"),
        "target_modules": peft_section.get("target_modules"),
        "probe_examples": 0,
        "max_abs_logit_diff": None,
    }
    if before is not None and batch is not None:
        after = _logits(merged, batch)
        info["probe_examples"] = int(before.shape[0])
        info["max_abs_logit_diff"] = float(torch.max(torch.abs(after - before)))
    return merged, info


def _probe_batch(run: TrainedRun, records: list[ift.InstructionRecord]) -> dict[str, Any] | None:
    examples = []
    for record in records[:PROBE_EXAMPLES]:
        try:
            examples.append(run.adapter.encode_record(run.tokenizer, record, run.renderer.render(record)))
        except ift.IftError:
            continue
    return run.adapter.collate(run.tokenizer, examples) if examples else None


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    """Logits of a collated batch: the inputs the model's forward accepts, in float32 on the CPU. Labels only
    for encoder-decoder models, which need them to build decoder inputs: with labels, a loaded AdaLoRA model's
    forward adds its training-only regulariser and fails outside training."""
    import inspect

    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        accepted.discard("labels")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in accepted and hasattr(v, "to")}
    with torch.no_grad():
        return model(**inputs).logits.float().cpu()


def evaluate(
    run: TrainedRun, model: Any, records: list[ift.InstructionRecord], host: Any, *, stage: str
) -> dict[str, Any]:
    """The run's eval metrics (``eval.metrics``, same batch size and max_new_tokens) for ``model`` on
    ``records``, encoded exactly as ``ift run`` encodes its eval split; the ``overall`` group."""
    from ift.data import DataReport, encode_records, stop_strings
    from ift.evaluation import Evaluator

    section = run.resolved["eval"]
    metrics = []
    options = section.get("metric_options") or {}  # the run's [eval.metric_options.NAME] (runs before: none)
    for name in section["metrics"]:
        cls = host.get("metric", name).cls
        metrics.append(cls(cls.Config.model_validate(options.get(name, {}), context={"host": host})))
    examples, kept = encode_records(
        records, run.renderer, run.adapter, run.tokenizer, _trainer_config(run, host), "eval", DataReport()
    )
    evaluator = Evaluator(
        adapter=run.adapter,
        tokenizer=run.tokenizer,
        renderer=run.renderer,
        metrics=metrics,
        records=kept,
        examples=examples,
        batch_size=int(section.get("batch_size", 8)),
        max_new_tokens=int(section.get("max_new_tokens", 64)),
        stop=stop_strings(run.renderer, kept[0]) if kept else [],
        samples=0,
    )
    result = evaluator(model, stage)
    return dict(result.get("overall", {}))


def _trainer_config(run: TrainedRun, host: Any) -> Any:
    """The run's trainer config (its max_length / overlong decide how eval examples are cut)."""
    from pydantic import ValidationError

    section = dict(run.resolved.get("trainer") or {})
    name = section.pop("name", "sft")
    try:
        return host.get("trainer", name).cls.Config.model_validate(section)
    except (ift.PluginError, ValidationError):
        keep = {k: section[k] for k in ("max_length", "overlong") if k in section}
        return ift.TrainerConfig.model_validate(keep)


def _records(run_dir: Path) -> list[ift.InstructionRecord]:
    path = run_dir / "data" / "eval.jsonl"
    return read_records(path) if path.is_file() else []


def _read_final(run_dir: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    final = metrics.get("final", {}).get("overall")
    return dict(final) if isinstance(final, dict) else None


def _delta(new: Any, old: Any) -> float | None:
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        return round(float(new) - float(old), 6)
    return None


def _check_output(run_dir: Path, output: Path, overwrite: bool) -> None:
    target, run = output.resolve(), run_dir.resolve()
    if target == run or target == run / "model" or run.is_relative_to(target):
        raise ift.RunError(f"--output {output} would replace the run directory or its model; choose another folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ift.RunError(f"{output} already exists; choose another --output or pass --overwrite")


def _commit(tmp: Path, output: Path) -> None:
    """Rename the finished folder into place; an old export (with --overwrite) is moved aside first and
    removed only after the new one is in place."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
