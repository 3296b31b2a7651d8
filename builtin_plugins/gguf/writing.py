"""A Hugging Face llama-architecture model and its tokenizer as a GGUF file, written with the ``gguf`` package
(llama.cpp's gguf-py): llama.cpp's tensor names (``gguf.get_tensor_name_map``), its metadata keys (the
``GGUFWriter.add_*`` methods), and Q8_0 blocks from ``gguf.quants``.

llama.cpp's own converter permutes the q and k projection weights of llama models (its rotary embedding pairs
neighbouring dimensions, Hugging Face's pairs the two halves of each head); transformers undoes that permutation
when it loads a GGUF file. :func:`permute_for_llama_cpp` is that permutation, so a file written here loads in
llama.cpp and back in transformers to the same model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ift

#: ``--quant`` choices: (tensor type of 2-D weights, llama.cpp file type name). Norms stay float32.
QUANTS: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
SUPPORTED_MODEL_TYPES = ("llama",)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def permute_for_llama_cpp(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """q/k projection rows reordered from Hugging Face's rotary layout to llama.cpp's (the inverse of what
    transformers applies when it reads a llama GGUF)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def check_exportable(model: Any) -> None:
    """Refuse a model whose architecture (or llama variant) this writer does not map to llama.cpp's."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ift.RunError(
            f"GGUF export supports the {', '.join(SUPPORTED_MODEL_TYPES)} architecture (SmolLM2, "
            f"Llama and models like them); this model's architecture is {model_type!r} "
            f"({type(model).__name__}); export a Hugging Face folder instead (ift export without "
            "--gguf) and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") not in ("default", None):
        raise ift.RunError(
            f"GGUF export: this llama model uses {rope.get('rope_type')!r} rope scaling, which this "
            "writer does not map to llama.cpp's keys; export without --gguf and use llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ift.RunError(
                f"GGUF export: this llama model has {flag} = true, which this writer does not map; "
                "export without --gguf and use llama.cpp's convert_hf_to_gguf.py"
            )


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    *,
    quant: str = "f16",
    name: str | None = None,
    chat_template: str | None = None,
    context_length: int | None = None,
    tokenizer_pre: str | None = None,
    eot_token_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """Write ``model`` (a plain llama ``*ForCausalLM``, LoRA already merged) and ``tokenizer`` to ``path``.

    ``chat_template`` goes to ``tokenizer.chat_template`` (default: the tokenizer's); ``context_length`` to
    ``llama.context_length`` (default: the config's ``max_position_embeddings``); ``tokenizer_pre`` names
    llama.cpp's pre-tokenizer (default: ``gpt2`` for a byte-level BPE tokenizer that splits like GPT-2, else
    ``default``); ``eot_token_ids``: the end-of-turn tokens (the first becomes ``tokenizer.ggml.eot_token_id``).
    Written to a temporary file renamed into place. Returns facts for the export report."""
    import gguf
    import numpy as np
    import torch

    if quant not in QUANTS:
        raise ift.RunError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    check_exportable(model)
    config = model.config
    tensor_kind, file_kind = (
        getattr(gguf.GGMLQuantizationType, QUANTS[quant][0]),
        getattr(gguf.LlamaFileType, QUANTS[quant][1]),
    )
    n_head, n_kv = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    n_blocks = int(config.num_hidden_layers)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    vocab = tokenizer_metadata(tokenizer, int(model.get_input_embeddings().num_embeddings), tokenizer_pre)

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        if name:
            writer.add_name(name)
        writer.add_context_length(int(context_length or config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(n_blocks)
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_freq_base(theta)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_vocab_size(len(vocab["tokens"]))
        writer.add_file_type(int(file_kind))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model(vocab["model"])
        writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        for key, adder in (
            ("bos", writer.add_bos_token_id),
            ("eos", writer.add_eos_token_id),
            ("unk", writer.add_unk_token_id),
            ("pad", writer.add_pad_token_id),
        ):
            if vocab[key] is not None:
                adder(int(vocab[key]))
        eot = [int(t) for t in eot_token_ids if t is not None]
        if eot:
            writer.add_eot_token_id(eot[0])
        writer.add_add_bos_token(bool(vocab["add_bos"]))
        writer.add_add_eos_token(False)
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if isinstance(template, str) and template:
            writer.add_chat_template(template)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        counts: dict[str, int] = {}
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp uses token_embd as the output projection when output.weight is absent
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ift.RunError(f"GGUF export: no llama.cpp tensor name for {hf_name!r} (llama architecture)")
            data = tensor.detach().to(torch.float32).cpu().numpy()
            if target.endswith("attn_q.weight"):
                data = permute_for_llama_cpp(data, n_head, n_head)
            elif target.endswith("attn_k.weight"):
                data = permute_for_llama_cpp(data, n_head, n_kv)
            data, kind = _encode(data, tensor_kind, gguf, np)
            counts[kind.name] = counts.get(kind.name, 0) + 1
            if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                writer.add_tensor(target, data)
            else:
                writer.add_tensor(target, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": path.name,
        "quant": quant,
        "file_type": file_kind.name,
        "bytes": path.stat().st_size,
        "tensor_types": counts,
        "tokenizer_model": vocab["model"],
        "tokenizer_pre": vocab["pre"],
        "vocab_size": len(vocab["tokens"]),
        "tied_embeddings": tied,
        "context_length": int(context_length or config.max_position_embeddings),
        "chat_template": bool(template),
        "eot_token_id": eot[0] if eot else None,
    }


def _encode(data: Any, kind: Any, gguf: Any, np: Any) -> tuple[Any, Any]:
    """A tensor in the export's type: vectors (norms) stay float32; Q8_0 needs rows that are whole 32-blocks
    (other rows are written as F16, as llama.cpp's converter does)."""
    types = gguf.GGMLQuantizationType
    if data.ndim < 2 or kind == types.F32:
        return data.astype(np.float32), types.F32
    if kind == types.F16:
        return data.astype(np.float16), types.F16
    block = gguf.GGML_QUANT_SIZES[kind][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), types.F16
    return gguf.quants.quantize(data, kind), kind


def tokenizer_metadata(tokenizer: Any, n_vocab: int, pre: str | None = None) -> dict[str, Any]:
    """llama.cpp's view of a byte-level BPE tokenizer: tokens by id (padded to the embedding rows), their types
    (special added tokens CONTROL, other added tokens USER_DEFINED), merges, special token ids, whether a BOS is
    added. Other tokenizer kinds (sentencepiece, WordPiece) are refused by name."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ift.RunError(
            f"GGUF export needs a fast tokenizer (tokenizer.json); this one is {type(tokenizer).__name__}"
        )
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(spec):
        raise ift.RunError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 "
            f"use); this tokenizer is {model.get('type')} with pre-tokenizer "
            f"{(spec.get('pre_tokenizer') or {}).get('type')}"
        )
    by_id = {int(i): t for t, i in tokenizer.get_vocab().items()}
    size = max(n_vocab, max(by_id) + 1)
    added = {int(i): token for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    tokens, types = [], []
    for i in range(size):
        if i in added:
            tokens.append(str(added[i].content))
            types.append(TOKEN_CONTROL if getattr(added[i], "special", False) else TOKEN_USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TOKEN_NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return {
        "model": "gpt2",
        "pre": pre or _pre_name(spec),
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": bos,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": bos is not None and bool(probe) and probe[0] == bos,
    }


def _components(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        inner = node.get("pretokenizers") or node.get("decoders") or []
        return [part for child in inner for part in _components(child)]
    return [node]


def _byte_level(spec: dict[str, Any]) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _components(spec.get("pre_tokenizer")))


def _pre_name(spec: dict[str, Any]) -> str:
    """``gpt2`` when the pre-tokenizer is GPT-2's own (ByteLevel with its regex and nothing else), else
    ``default`` (llama.cpp's generic BPE split; llama.cpp may then split some text differently than training)."""
    parts = _components(spec.get("pre_tokenizer"))
    if len(parts) == 1 and parts[0].get("type") == "ByteLevel" and parts[0].get("use_regex", True):
        return "gpt2"
    return "default"
