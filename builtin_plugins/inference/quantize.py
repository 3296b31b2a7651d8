"""The int8 copy ``ift export --quantize int8`` writes: torch's dynamic int8 quantization of every
``nn.Linear`` (weights stored as int8 with a per-tensor scale, activations quantized on the fly), for CPU
inference.

Why torch's own ``quantize_dynamic`` and not torchao: it ships with torch, needs no new dependency, and its
modules run on every CPU torch supports. torch marks ``torch.ao.quantization`` as deprecated in favour of
torchao; it is still present and working in the torch versions ift supports, and its warnings are silenced
here only around the two calls that emit them.

A copy is a folder: the model's ``config.json``, tokenizer, ``generation_config.json``, the quantized
``state_dict`` (``model_int8.pt``, readable with ``torch.load(..., weights_only=True)``) and
``quantization.json``. :func:`load_quantized_model` rebuilds it: model from the config, the same
quantization applied to it, then the saved state loaded into it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ift

QUANTIZATION_FILE = "quantization.json"
WEIGHTS_FILE = "model_int8.pt"
FORMAT = "torch-dynamic-int8"


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")  # saving packed weights
        yield


def _quantize_dynamic() -> Any:
    import torch

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise ift.RunError(
            f"--quantize int8 uses torch.ao.quantization.quantize_dynamic, which this torch "
            f"({torch.__version__}) no longer has"
        ) from None
    return quantize_dynamic


def quantize_int8(model: Any) -> Any:
    """Quantize ``model``'s Linear layers to dynamic int8, in place, after moving it to the CPU in float32
    (dynamic quantization is a CPU kernel and starts from float32 weights). Returns the model."""
    import torch

    quantize_dynamic = _quantize_dynamic()
    model = model.to(device="cpu", dtype=torch.float32).eval()
    with _quiet_deprecations():
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def save_quantized(model: Any, tokenizer: Any, path: Path, *, source: str) -> int:
    """Write the int8 copy of a quantized model into the existing folder ``path``; returns the size in bytes of
    its weights file."""
    import torch

    model.config.save_pretrained(str(path))
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    with _quiet_deprecations():
        torch.save(model.state_dict(), path / WEIGHTS_FILE)
    layers = sum(1 for m in model.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__)
    (path / QUANTIZATION_FILE).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "weights": WEIGHTS_FILE,
                "modules": "torch.nn.Linear",
                "dtype": "qint8",
                "quantized_layers": layers,
                "torch": torch.__version__,
                "source": source,
                "architectures": getattr(model.config, "architectures", None),
            },
            indent=2,
        )
        + "\n"
    )
    return (path / WEIGHTS_FILE).stat().st_size


def load_quantized_model(path: Path, auto_class: Any, **config_kwargs: Any) -> Any:
    """Rebuild an int8 copy: ``auto_class`` (e.g. ``AutoModelForCausalLM``) from the folder's config, the same
    quantization, then the saved weights (strictly: every key must match). On the CPU, in eval mode."""
    import torch
    from transformers import AutoConfig

    path = Path(path)
    info = json.loads((path / QUANTIZATION_FILE).read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ift.RunError(
            f"{path / QUANTIZATION_FILE}: unknown quantization format {info.get('format')!r} "
            f"(this ift reads {FORMAT!r})"
        )
    config = AutoConfig.from_pretrained(str(path), **config_kwargs)
    model = auto_class.from_config(config, dtype=torch.float32)
    quantize_int8(model)
    with _quiet_deprecations():
        state = torch.load(path / info.get("weights", WEIGHTS_FILE), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ift.RunError(
            f"{path}: the int8 weights do not fit the model its config describes: {str(exc).splitlines()[0]}"
        ) from None
    return model.eval()


def weights_size(path: Path) -> int:
    """Bytes of the weight files in a model folder (safetensors / bin / the int8 state), not counting
    tokenizer and config files."""
    names = ("*.safetensors", "*.bin", WEIGHTS_FILE)
    return sum(f.stat().st_size for pattern in names for f in Path(path).glob(pattern) if f.is_file())
