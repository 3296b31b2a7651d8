"""GGUF in and out.

In: a recipe's ``[model] name_or_path`` may name a ``.gguf`` file (a path, ``package:NAME/file.gguf``, or
``package:NAME`` when the package ships exactly one): :func:`resolve_gguf` converts it once, through transformers'
own GGUF loader, into a cached safetensors model folder that the rest of ift uses like any local model folder.

Out: :func:`write_gguf` writes a trained llama-architecture model (LoRA merged) as a GGUF file with llama.cpp's
tensor names and metadata keys through the ``gguf`` package, and :func:`ollama_modelfile` the Ollama
``Modelfile`` beside it; ``ift export RUN_DIR --gguf`` drives both.

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

from ift.builtin_plugins.gguf.convert import (
    ConvertedModel,
    convert_gguf,
    converted_source,
    gguf_cache_root,
    is_gguf_reference,
    resolve_gguf,
)
from ift.builtin_plugins.gguf.reading import GGUFInfo, read_gguf_info

__all__ = [
    "ConvertedModel",
    "GGUFInfo",
    "convert_gguf",
    "converted_source",
    "gguf_cache_root",
    "is_gguf_reference",
    "read_gguf_info",
    "resolve_gguf",
]
