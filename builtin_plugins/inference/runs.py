"""A finished run, opened for inference: its model through the run's own model adapter, and its template rebuilt
from ``resolved.json`` and checked against the hash recorded in ``manifest.json``.

Everything that uses a trained run (``ift generate``, ``ift chat``, ``ift export``, ``ift serve``) goes through
:func:`open_run`, so the prompt a model sees after training is rendered exactly as during training: a template
that changed since (an edited file, a different tokenizer chat template) is refused, never silently used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ift

#: Where ``ift run`` keeps a copy of a template file (``[template] path = ...``), inside the run directory.
TEMPLATE_COPY_DIR = "template"


@dataclass
class TrainedRun:
    """A completed run with its model loaded: what inference commands need, and nothing they must guess."""

    run_dir: Path
    resolved: dict[str, Any]
    manifest: dict[str, Any]
    adapter: Any
    model: Any
    tokenizer: Any
    renderer: Any
    model_dir: Path

    @property
    def name(self) -> str:
        return str(self.resolved.get("run", {}).get("name") or self.run_dir.resolve().name)

    def prompt(self, messages: Sequence[ift.Message]) -> str:
        """The text the model continues for the next assistant turn: the run's template applied to
        ``messages`` (system / user / assistant turns, ending with a user turn), cut where the answer starts,
        exactly as the prompts of the run's own evaluation were made."""
        return conversation_prompt(self.renderer, messages)

    def stop(self) -> list[str]:
        """What the template writes after an answer (EOS, ``<|im_end|>``...): generation stops there."""
        return stop_texts(self.renderer)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8) -> list[str]:
        """Greedy answers to rendered prompts, through the adapter (whatever the model family)."""
        return list(
            self.adapter.generate(
                self.model,
                self.tokenizer,
                list(prompts),
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                stop=self.stop(),
            )
        )

    @property
    def prompt_limit(self) -> int | None:
        """The most prompt tokens the model is given (the run's trained ``max_length``), or None."""
        return getattr(self.adapter, "max_prompt_tokens", None)

    def token_count(self, text: str) -> int:
        """How many tokens ``text`` is as a prompt (the adapter's own encoding, special tokens included)."""
        example = self.adapter.encode(self.tokenizer, [ift.Segment(text, False)], source="prompt", record_id="")
        return len(example.input_ids)


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``resolved.json`` and ``manifest.json`` of a run that completed; a clear error for anything else
    (not a run directory, a run still going, failed or interrupted)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ift.RunError(f"{run_dir} is not a directory")
    status_file = run_dir / "status.json"
    if not status_file.is_file() or not (run_dir / "resolved.json").is_file():
        raise ift.RunError(
            f"{run_dir} is not an ift run directory (no status.json / resolved.json; pass the folder `ift run` wrote)"
        )
    status = _read_json(status_file)
    state = status.get("status")
    if state != "completed":
        why = f": {status['error']}" if status.get("error") else ""
        hint = {
            "running": "it is still running, or stopped without recording why",
            "interrupted": f"continue it with `ift run RECIPE --output-dir {run_dir} --resume`",
            "failed": "it has no trained model",
        }.get(str(state), "it has no trained model")
        raise ift.RunError(f"{run_dir}: the run did not complete (status {state!r}{why}); {hint}")
    if not (run_dir / "model").is_dir():
        raise ift.RunError(f"{run_dir} is marked completed but has no model/ folder")
    return _read_json(run_dir / "resolved.json"), _read_json(run_dir / "manifest.json")


def build_adapter(resolved: dict[str, Any], host: Any, base_dir: Path, *, device: str | None = None) -> Any:
    """The run's model adapter, rebuilt from the ``model`` section of ``resolved.json`` through the plugin
    host (so a plugin's adapter is found exactly as ``ift run`` found it). ``device`` replaces the recorded
    ``model.device`` when the adapter has that setting."""
    from pydantic import ValidationError

    section = dict(resolved.get("model") or {})
    name = section.pop("adapter", None)
    if not isinstance(name, str):
        raise ift.RunError("resolved.json has no model.adapter; the run directory is incomplete")
    registered = host.get("model_adapter", name)
    if device is not None and "device" in registered.cls.Config.model_fields:
        section["device"] = device
    try:
        config = registered.cls.Config.model_validate(section, context={"host": host})  # plugins' PEFT methods
    except ValidationError as exc:
        problems = "; ".join(f"model.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ift.RunError(
            f"the run's model section no longer validates with adapter {name!r} "
            f"({registered.distribution} {registered.version}): {problems}"
        ) from None
    return registered.cls(config, base_dir=base_dir)


def build_renderer(run_dir: Path, host: Any, recipe_dir: Path | None = None) -> Any:
    """The run's renderer, rebuilt from the ``template`` section of ``resolved.json`` through the plugin host.

    A template file (``[template] path = ...``) is read from the copy ``ift run`` keeps in
    ``RUN_DIR/template/``: the recipe's folder may be gone or the file edited since. Runs made before copies
    were kept resolve the path against ``recipe_dir`` when given, else the run directory, else the current
    folder.
    """
    resolved = _read_json(Path(run_dir) / "resolved.json")
    section = dict(resolved["template"])
    registered = host.get("renderer", section.pop("name"))
    candidates = [recipe_dir] if recipe_dir else [run_dir, Path.cwd()]
    base_dir = candidates[0]
    path = section.get("path")
    if isinstance(path, str):
        kept = Path(run_dir) / TEMPLATE_COPY_DIR / Path(path).name
        if kept.is_file():
            section["path"] = str(kept.resolve())
        elif not Path(path).is_absolute():
            base_dir = next((c for c in candidates if (c / path).is_file()), candidates[0])
    config = registered.cls.Config(**section)
    try:
        return registered.cls(config, base_dir=base_dir, prepare_jinja_env=host.prepare_jinja_env)
    except ift.RecipeError as exc:
        raise ift.RunError(
            f"cannot rebuild the run's template ({exc}); if it is a file next to the recipe, pass --recipe-dir"
        ) from None


def check_template(renderer: Any, manifest: dict[str, Any], run_dir: Path) -> str:
    """Refuse a template that differs from the one the run trained with; returns the hash. Call after
    ``renderer.bind(tokenizer)`` (the ``chat`` template's text comes from the tokenizer)."""
    recorded = (manifest.get("template") or {}).get("hash")
    if not recorded:
        raise ift.RunError(
            f"{run_dir}/manifest.json records no template hash, so the template cannot be "
            "checked against the one used in training"
        )
    rebuilt = renderer.template_hash()
    if rebuilt != recorded:
        origin = getattr(renderer, "origin", None) or type(renderer).__name__
        raise ift.RunError(
            f"template drift in {run_dir}: the run trained with template hash {recorded}, but the "
            f"template rebuilt now ({origin}) has hash {rebuilt}; prompts would not match "
            "training. Restore the template the run used (RUN_DIR/template/ keeps a copy of a "
            "template file) or retrain"
        )
    return rebuilt


def open_run(
    run_dir: Path,
    host: Any,
    *,
    model_dir: Path | None = None,
    device: str | None = None,
    recipe_dir: Path | None = None,
    merge: bool = False,
) -> TrainedRun:
    """Open a completed run: adapter from ``resolved.json``, ``adapter.load_trained(RUN_DIR/model)`` (or
    ``model_dir``, e.g. an export or its int8 copy), the template rebuilt and checked against the manifest.

    ``merge`` folds a peft adapter into its base (faster decoding, same answers); ``ift export`` keeps it
    unmerged so it can verify the merge itself.
    """
    run_dir = Path(run_dir)
    resolved, manifest = read_run(run_dir)
    renderer = build_renderer(run_dir, host, recipe_dir)  # before the model: a missing template fails fast
    adapter = build_adapter(resolved, host, recipe_dir or run_dir, device=device)
    path = Path(model_dir) if model_dir is not None else run_dir / "model"
    if not path.is_dir():
        raise ift.RunError(f"model folder {path} does not exist")
    try:
        model, tokenizer = adapter.load_trained(path)
    except NotImplementedError as exc:
        raise ift.RunError(f"the {adapter.name!r} model adapter cannot load a saved model ({exc})") from None
    state = (manifest.get("data") or {}).get("adapter")
    if isinstance(state, dict):  # e.g. a classifier's labels and the length its inputs were cut to in training
        adapter.restore_data(state)
    trained = (resolved.get("trainer") or {}).get("max_length")
    if getattr(adapter, "generates_text", True) and isinstance(trained, int) and trained > 0:
        # prompts are cut to the length the run was trained and evaluated with (keeping their end, where the
        # answer starts), not to the model's maximum
        adapter.max_prompt_tokens = trained
    renderer.bind(tokenizer)
    check_template(renderer, manifest, run_dir)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if device is not None and not is_quantized(path):
        from ift.runtime import select_device

        model = model.to(select_device(device))
    return TrainedRun(run_dir, resolved, manifest, adapter, model, tokenizer, renderer, path)


def is_quantized(path: Path) -> bool:
    """Whether ``path`` is an int8 copy written by ``ift export --quantize int8`` (CPU only)."""
    from ift.builtin_plugins.inference.quantize import QUANTIZATION_FILE

    return (Path(path) / QUANTIZATION_FILE).is_file()


def conversation_prompt(renderer: Any, messages: Sequence[ift.Message]) -> str:
    """The template applied to a conversation up to where the next assistant answer starts."""
    record = ift.InstructionRecord("prompt", "prompt", [*messages, ift.Message("assistant", "")])
    return str(renderer.prompt(record))


def stop_texts(renderer: Any) -> list[str]:
    """What the template writes after an answer inside the trained span (EOS, ``<|im_end|>``...)."""
    probe = "\u2402probe"
    record = ift.InstructionRecord("serve-probe", "serve", [ift.Message("user", "hi"), ift.Message("assistant", probe)])
    trained = [s.text for s in renderer.render(record) if s.trainable]
    if trained and probe in trained[-1]:
        suffix = trained[-1].split(probe, 1)[1].strip()
        return [suffix] if suffix else []
    return []


def context_length(model: Any) -> int:
    """The model's context window from its config (very large when the config does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def new_token_budget(run: TrainedRun, prompt_tokens: int, max_new_tokens: int) -> int:
    """How many new tokens a prompt of ``prompt_tokens`` may get: ``max_new_tokens`` fitted into what the
    model's context leaves, as ``ift serve`` does (0: the prompt alone fills the context). An adapter whose
    answers are no generated text (a classifier: ``generates_text = False``; it cuts its inputs to the
    length it was trained with) is never limited by a new-token budget it does not use."""
    if not getattr(run.adapter, "generates_text", True):
        return max_new_tokens
    return max(0, min(max_new_tokens, context_length(run.model) - prompt_tokens))


def read_records(path: Path) -> list[ift.InstructionRecord]:
    """Records written as ``InstructionRecord.to_dict()`` lines (a run's ``data/eval.jsonl``)."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            records.append(
                ift.InstructionRecord(
                    str(row["id"]),
                    str(row["source"]),
                    [ift.Message(m["role"], m["content"]) for m in row["messages"]],
                    task=row.get("task"),
                    label=row.get("label"),
                    choices=row.get("choices"),
                    metadata=dict(row.get("metadata") or {}),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ift.DataError(
                f"not a record written by ift run ({type(exc).__name__}: {exc})", file=str(path), line=number
            ) from None
    return records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ift.RunError(
            f"{Path(path).parent} is not an ift run directory (cannot read {Path(path).name}: {exc})"
        ) from None
    if not isinstance(data, dict):
        raise ift.RunError(f"{path} does not hold a JSON object")
    return data
