"""What a run's ``model/`` folder promises other tools: the trained prompt format as the tokenizer's
``chat_template``, every end-of-turn token the model learned to emit in ``generation_config.json``'s
``eos_token_id``, the trained context as ``model_max_length``, and (LoRA) a base model path that resolves from
any working directory. See docs/inference.md."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.chat_export import chat_template_for, probe_conversations, verify_chat_template

BASE_FOLDER = "base_model"
_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
log = logging.getLogger("ift")


def stop_token_ids(tokenizer: Any, renderer: Any) -> tuple[list[int], list[str]]:
    """The ids generation stops at (EOS and every end-of-turn text that is one token) and the end-of-turn
    texts that are several tokens (``model.generate`` cannot stop at those without ``stop_strings``)."""
    from ift.builtin_plugins.inference.runs import stop_texts

    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    several = []
    for text in stop_texts(renderer):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(int(encoded[0]))
        elif encoded:
            several.append(text)
    return sorted(ids), several


def _write_tokenizer(path: Path, template: str | None, max_length: int) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    for name in _CHAT_TEMPLATE_FILES:  # a stale template file would be read back even when none is saved
        (path / name).unlink(missing_ok=True)
    tokenizer.chat_template = template
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(path))
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    if template is None and config.pop("chat_template", None) is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _write_generation_config(folders: Sequence[Path], eos: list[int], pad: int | None) -> None:
    from transformers import GenerationConfig

    for folder in folders:
        try:
            config = GenerationConfig.from_pretrained(str(folder))
        except OSError:
            config = GenerationConfig()
        config.eos_token_id = eos if len(eos) != 1 else eos[0]
        if pad is not None:
            config.pad_token_id = pad
        config.save_pretrained(str(folder))


def _point_base(path: Path, final_path: Path) -> str | None:
    """Make ``adapter_config.json``'s base path absolute (a base inside the folder at its final place, a local
    folder resolved), so peft finds it from any working directory; a hub id stays as it is."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        return None
    data = json.loads(config_file.read_text(encoding="utf-8"))
    base = str(data.get("base_model_name_or_path") or "")
    if (path / BASE_FOLDER).is_dir():
        base = str((final_path / BASE_FOLDER).resolve())
    elif base and Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().resolve())
    data["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return base


def finish_model_folder(
    path: Path,
    *,
    final_path: Path,
    tokenizer: Any,
    renderer: Any,
    records: Sequence[ift.InstructionRecord],
    max_length: int,
    bos_prefix: bool = False,
    chat: bool = True,
) -> dict[str, Any]:
    """Complete a saved ``model/`` folder (written in ``path``, to be renamed to ``final_path``) for other tools;
    returns the facts for the manifest. ``records``: the run's conversations the exported chat template is
    checked on, with probe conversations. ``chat``: whether a chat template applies (not for classifiers)."""
    facts: dict[str, Any] = {"model_max_length": max_length}
    template: str | None = None
    if chat:
        export = chat_template_for(renderer, tokenizer, bos_prefix=bos_prefix)
        template, origin = export.template, export.origin
        if template is not None and getattr(renderer, "name", "") != "chat":
            bos = (tokenizer.bos_token or "") if bos_prefix else ""
            conversations = [*probe_conversations(), *(r.messages for r in records)]
            mismatch = verify_chat_template(template, tokenizer, renderer, conversations, bos=bos)
            if mismatch is not None:
                template, origin = None, f"{origin}, but it did not reproduce ift's prompts ({mismatch})"
        facts["chat_template"] = {"saved": template is not None, "origin": origin}
        if template is None:
            log.warning("model/: no chat template saved: %s; use `ift generate` or render prompts yourself", origin)
    _write_tokenizer(path, template, max_length)
    eos, several = stop_token_ids(tokenizer, renderer)
    folders = [path] + ([path / BASE_FOLDER] if (path / BASE_FOLDER).is_dir() else [])
    _write_generation_config(folders, eos, tokenizer.pad_token_id)
    facts["eos_token_id"] = eos
    if several:
        facts["stop_strings"] = several
        log.warning(
            "model/: the end-of-turn text(s) %s are several tokens; plain generate() needs "
            "stop_strings=... and tokenizer=... to stop there",
            several,
        )
    base = _point_base(path, final_path)
    if base is not None:
        facts["base_model_name_or_path"] = base
        if not (path / BASE_FOLDER).is_dir():
            facts["base_generation_config_stops"] = covered = _base_stops(base, eos)
            if not covered:
                log.warning(
                    "model/: peft's generate() uses the base model's generation_config, which does not "
                    "list every trained end-of-turn id %s; pass generation_config=GenerationConfig."
                    "from_pretrained('RUN/model') (docs/inference.md)",
                    eos,
                )
    return facts


def _base_stops(base: str, eos: list[int]) -> bool:
    """Whether the base model's own generation config (which peft's ``generate`` uses) stops at every id in
    ``eos``; False when it cannot be read."""
    from transformers import GenerationConfig

    try:
        listed = GenerationConfig.from_pretrained(base).eos_token_id
    except (OSError, ValueError):
        return False
    listed_ids = {listed} if isinstance(listed, int) else set(listed or [])
    return set(eos) <= listed_ids
