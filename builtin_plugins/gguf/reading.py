"""What a GGUF file holds, read with the ``gguf`` package's ``GGUFReader`` (llama.cpp's own reader): the
architecture, the file type and the dominant tensor type (the quantization people name a file by, e.g. Q4_1),
the model's name and context length. Every way a file can be unusable is one :class:`ift.RunError` line that
names the file and what it holds."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ift

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFInfo:
    """The facts about one GGUF file that a run records and that decide whether it can be converted."""

    path: str
    size: int
    architecture: str
    name: str | None
    file_type: str | None  # llama.cpp's general.file_type (e.g. MOSTLY_Q4_1), when the file says
    quantization: str  # the tensor type holding most weights (e.g. Q4_1, Q8_0, F16)
    tensor_types: dict[str, int] = field(default_factory=dict)  # tensor type -> number of tensors
    tensors: int = 0
    context_length: int | None = None
    tokenizer_model: str | None = None  # tokenizer.ggml.model: gpt2 (byte-level BPE), llama (sentencepiece) ...
    tokenizer_pre: str | None = None  # tokenizer.ggml.pre: how text is split before BPE (smollm, llama-bpe ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``llama, Q4_1, 98.4 MB`` (what the file is, in a few words)."""
        return f"{self.architecture}, {self.quantization}, {self.size / 1e6:.1f} MB"


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_info(path: Path) -> GGUFInfo:
    """The :class:`GGUFInfo` of ``path``; a clear error for a file that is not GGUF or cannot be read whole."""
    return open_gguf(path)[0]


def open_gguf(path: Path) -> tuple[GGUFInfo, Any]:
    """:func:`read_gguf_info` and the ``GGUFReader`` it used (reading a large vocabulary takes seconds)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ift.RunError(f"{path}: cannot read the GGUF file: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise ift.RunError(
            f"{path}: not a GGUF file (it starts with {head!r}, a GGUF file with b'GGUF'; {size:,} bytes)"
        )
    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OSError, TypeError, np.exceptions.AxisError) as exc:
        raise ift.RunError(
            f"{path}: the GGUF file cannot be read ({_first_line(exc)}; {size:,} bytes): truncated "
            "or damaged? Copy it again"
        ) from None
    counts: collections.Counter[str] = collections.Counter()
    weights: collections.Counter[str] = collections.Counter()
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        counts[kind] += 1
        weights[kind] += int(tensor.n_elements)
    fields = {key: _value(reader, key) for key in reader.fields}
    architecture = str(fields.get("general.architecture") or "unknown")
    file_type = fields.get("general.file_type")
    try:
        file_type_name = LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    # The dominant type among multi-dimensional weights: norms stay F32 in every quantized file.
    matrices: collections.Counter[str] = collections.Counter()
    for tensor in reader.tensors:
        if len(tensor.shape) > 1:
            matrices[tensor.tensor_type.name] += int(tensor.n_elements)
    dominant = (matrices or weights).most_common(1)
    quantization = dominant[0][0] if dominant else GGMLQuantizationType.F32.name
    context = fields.get(f"{architecture}.context_length")
    info = GGUFInfo(
        path=str(path),
        size=size,
        architecture=architecture,
        name=str(fields["general.name"]) if fields.get("general.name") else None,
        file_type=file_type_name,
        quantization=quantization,
        tensor_types=dict(counts),
        tensors=len(reader.tensors),
        context_length=int(context) if context is not None else None,
        tokenizer_model=_str_or_none(fields.get("tokenizer.ggml.model")),
        tokenizer_pre=_str_or_none(fields.get("tokenizer.ggml.pre")),
    )
    return info, reader


def check_readable(path: Path, info: GGUFInfo, reader: Any) -> None:
    """Refuse what transformers cannot turn into a torch model: an architecture it has no GGUF mapping for, or a
    tensor type the ``gguf`` package cannot dequantize (tried on the smallest tensor of each type)."""
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if info.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ift.RunError(
            f"{path}: a GGUF file of architecture {info.architecture!r} ({info.describe()}), which "
            "transformers cannot load from GGUF; it reads: "
            f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}"
        )
    smallest: dict[Any, Any] = {}
    for tensor in reader.tensors:
        held = smallest.get(tensor.tensor_type)
        if held is None or tensor.n_bytes < held.n_bytes:
            smallest[tensor.tensor_type] = tensor
    for kind, tensor in smallest.items():
        try:
            dequantize(tensor.data, kind)
        except (NotImplementedError, ValueError, KeyError) as exc:
            raise ift.RunError(
                f"{path}: tensor {tensor.name} is stored as {kind.name}, which the gguf package "
                f"cannot dequantize ({_first_line(exc)}); the file holds "
                f"{_type_list(info)}"
            ) from None


def _type_list(info: GGUFInfo) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(info.tensor_types.items(), key=lambda kv: -kv[1]))


def _value(reader: Any, key: str) -> Any:
    """A scalar or string field's value (arrays are not needed here and are skipped: they can be huge)."""
    from gguf import GGUFValueType

    item = reader.fields[key]
    if not item.types or item.types[0] == GGUFValueType.ARRAY:
        return None
    try:
        return item.contents()
    except (ValueError, IndexError, TypeError):
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
