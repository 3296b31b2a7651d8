"""What ``ift export`` prints and writes about an export: the summary table (sizes, each metric for the export
and its int8 copy, the merge and GGUF checks) and the folder's README.md (where the model came from, the prompt
format it was trained on, how to load it)."""

from __future__ import annotations

from typing import Any

import ift
from ift.builtin_plugins.inference.runs import TrainedRun

__all__ = ["model_card", "summary_table"]


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n / 1e3:.1f} kB"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def summary_table(report: dict[str, Any]) -> str:
    """What the export measured, as a small text table (sizes, then each metric: export, int8, change)."""
    export, int8 = report["export"], report.get("int8")
    rows = [("", "export", "int8" if int8 else "", "change" if int8 else "")]
    rows.append(
        (
            "weights",
            f"{_megabytes(export['weights_bytes'])} ({export['dtype']})",
            _megabytes(int8["weights_bytes"]) if int8 else "",
            f"{(int8['size_ratio'] - 1) * 100:+.1f}%" if int8 else "",
        )
    )
    evaluation = report.get("eval") or {}
    for name, value in (evaluation.get("export") or {}).items():
        if name == "n":
            continue
        change = (evaluation.get("change") or {}).get(name)
        rows.append(
            (
                name,
                _number(value),
                _number((evaluation.get("int8") or {}).get(name)),
                f"{change:+.4f}" if isinstance(change, float) else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    merge = report.get("merge")
    if merge and merge.get("max_abs_logit_diff") is not None:
        lines.append(
            f"merge check: max |logit difference| vs base + adapter = {merge['max_abs_logit_diff']:.2e} "
            f"on {merge['probe_examples']} eval examples"
        )
    if evaluation.get("export"):
        lines.append(f"eval: {evaluation['export'].get('n', evaluation['records'])} records of the run's eval split")
    gguf = report.get("gguf")
    if gguf:
        check = gguf.get("check") or {}
        diff = check.get("max_abs_logit_diff")
        lines.append(
            f"gguf: {gguf['file']} ({gguf['quant']}, {_megabytes(gguf['bytes'])}) and an Ollama Modelfile; "
            "loaded back with transformers: max |logit difference| vs the export = "
            + (f"{diff:.2e} on {check.get('probe_examples')} eval examples" if diff is not None else "-")
        )
        for name, change in (check.get("change") or {}).items():
            value = (check.get("eval") or {}).get(name)
            lines.append(
                f"gguf {name}: {_number(value)} ({change:+.4f} vs the export)"
                if isinstance(change, float)
                else f"gguf {name}: {_number(value)}"
            )
    return "\n".join(lines)


def model_card(run: TrainedRun, report: dict[str, Any]) -> str:
    """README.md of the export: where it came from, the prompt format it was trained on, how to load it."""
    merge = report.get("merge")
    if merge:
        method = merge.get("method", "lora")
        settings = [f"{k}={merge[k]}" for k in ("r", "alpha") if merge.get(k) is not None]
        settings.append(f"target modules {merge.get('target_modules') or 'peft default'}")
        label = {"lora": "LoRA", "adalora": "AdaLoRA", "ia3": "IA3"}.get(method, method)
        tuned = f"{label} ({', '.join(settings)}), merged into the base weights with peft's merge_and_unload"
    else:
        tuned = "full fine-tuning"
    example = run.prompt([ift.Message("user", "{your message}")])
    stops = run.stop()
    lines = [
        f"# {run.name}",
        "",
        f"Exported by ift {report['ift']} on {report['created']} from the run `{report['run']}`.",
        "",
        f"- Base model: {report.get('base_model') or 'see the run manifest'}",
        f"- Fine-tuning: {tuned}",
        f"- Template: `{report['template']['name']}`, hash `{report['template']['hash']}` (the hash `ift run` "
        "recorded in the run's manifest.json; prompts must use this template)",
        f"- Weights: {report['export']['dtype']}, {_megabytes(report['export']['weights_bytes'])}",
        "",
        "## Prompt format",
        "",
        "The model was trained on prompts rendered like this (the answer follows; generation should stop at "
        + (f"`{stops[0]}`" if stops else "the end-of-sequence token")
        + "):",
        "",
        "```text",
        example,
        "```",
        "",
        "## Loading",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer  # or the class of this model family",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
        "```",
        "",
        'With ift, the run\'s template is applied for you: `ift generate RUN_DIR "message" --model THIS_FOLDER`.',
    ]
    int8 = report.get("int8")
    if int8:
        lines += [
            "",
            "## int8 copy (`int8/`)",
            "",
            f"torch dynamic int8 quantization of {int8['quantized_layers']} Linear layers, for CPU inference: "
            f"{_megabytes(int8['weights_bytes'])} of weights ({(int8['size_ratio'] - 1) * 100:+.1f}% vs the export). "
            'Use it with `ift generate RUN_DIR "message" --model THIS_FOLDER/int8`, or in Python:',
            "",
            "```python",
            "from ift.builtin_plugins.inference.quantize import load_quantized_model",
            "from transformers import AutoModelForCausalLM",
            "",
            'model = load_quantized_model("PATH/TO/THIS/FOLDER/int8", AutoModelForCausalLM)',
            "```",
            "",
            "(It rebuilds the model from `config.json`, applies `torch.ao.quantization.quantize_dynamic` to its "
            "Linear layers and loads `model_int8.pt` with `torch.load(..., weights_only=True)`.)",
        ]
    evaluation = report.get("eval") or {}
    if evaluation.get("export"):
        lines += [
            "",
            "## Evaluation",
            "",
            f"On the run's eval split ({evaluation['export'].get('n')} records):",
            "",
            "```text",
            summary_table(report),
            "```",
        ]
    return "\n".join(lines) + "\n"
