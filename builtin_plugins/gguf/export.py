"""``ift export RUN_DIR --gguf [--quant f16|q8_0]``: the (merged) model as ``<name>-<quant>.gguf`` with the run's
tokenizer and chat template in its metadata, an Ollama ``Modelfile`` beside it, and a check of what was written:
the file is loaded back with transformers (``gguf_file=``), its logits compared with the exported model's on eval
prompts, its tokenizer's ids compared with the run's, and the run's eval metrics measured on it."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.gguf.modelfile import ollama_modelfile, prompt_pieces
from ift.builtin_plugins.gguf.writing import QUANTS, check_exportable, write_gguf

MODELFILE = "Modelfile"


def gguf_file_name(run_name: str, quant: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-") or "model"
    return f"{safe}-{quant}.gguf"


def export_gguf(
    run: Any,
    model: Any,
    folder: Path,
    *,
    quant: str,
    probe: Callable[[Any], Any] | None,
    evaluate: Callable[[Any, str], dict[str, Any]] | None,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Write the GGUF and the Modelfile into ``folder``; returns the report's ``gguf`` section. ``probe(model)``
    gives logits on a few eval examples (None: no eval split); ``evaluate(model, stage)`` the run's eval metrics."""
    import torch

    if quant not in QUANTS:
        raise ift.RunError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    check_exportable(model)
    tokenizer = run.tokenizer
    stops = list(run.stop())
    eot = []
    for text in stops:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            eot.append(ids[0])
    trained = int((run.resolved.get("trainer") or {}).get("max_length") or 0)
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    num_ctx = min(trained, positions) if trained and positions else (trained or positions or 2048)
    source = (run.manifest.get("model") or {}).get("gguf") or {}
    name = gguf_file_name(run.name, quant)
    echo(f"writing {name} ({quant}) with the gguf package ...")
    facts = write_gguf(
        model.to(torch.float32),
        tokenizer,
        folder / name,
        quant=quant,
        name=run.name,
        chat_template=getattr(tokenizer, "chat_template", None),
        context_length=positions or None,
        tokenizer_pre=source.get("tokenizer_pre"),
        eot_token_ids=eot,
    )
    pieces = prompt_pieces(run.prompt)
    (folder / MODELFILE).write_text(
        ollama_modelfile(
            name,
            pieces,
            stops,
            context_length=num_ctx,
            note=f"run {run.name}, template {run.resolved['template'].get('name')}",
        ),
        encoding="utf-8",
    )
    facts.update({"modelfile": MODELFILE, "num_ctx": num_ctx, "stop": stops, "multi_turn": pieces.multi_turn})
    echo(f"loading {name} back with transformers to check it ...")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # From a folder holding the GGUF alone: beside the export's tokenizer files, transformers would mix those in.
    alone = Path(tempfile.mkdtemp(prefix=".gguf-check-", dir=folder.parent))
    try:
        os.symlink((folder / name).resolve(), alone / name)
        loaded = AutoModelForCausalLM.from_pretrained(str(alone), gguf_file=name, dtype=torch.float32).eval()
        loaded_tokenizer = AutoTokenizer.from_pretrained(str(alone), gguf_file=name)
    finally:
        shutil.rmtree(alone, ignore_errors=True)
    check: dict[str, Any] = {"max_abs_logit_diff": None, "probe_examples": 0}
    if probe is not None:
        before, after = probe(model), probe(loaded)
        if before is not None and after is not None:
            check["max_abs_logit_diff"] = float(torch.max(torch.abs(after - before)))
            check["probe_examples"] = int(before.shape[0])
    sample = run.prompt([ift.Message("user", "Hello! What can you do?")])
    check["tokenizer_ids_equal"] = list(loaded_tokenizer(sample, add_special_tokens=False)["input_ids"]) == list(
        tokenizer(sample, add_special_tokens=False)["input_ids"]
    )
    check["chat_template_equal"] = loaded_tokenizer.chat_template == getattr(tokenizer, "chat_template", None)
    if evaluate is not None:
        echo(f"evaluating {name} (as transformers loads it) on the run's eval split ...")
        check["eval"] = evaluate(loaded, "gguf")
    facts["check"] = check
    return facts
