"""The data stage of ``ift run``: read the recipe's sources, clean, split, render and tokenize into column files
(:mod:`ift.examples`), or reuse an identical earlier preparation from the cache (:mod:`ift.cache`).

:class:`DataPreparation` keeps what the run needs afterwards: the freshly read records (written to the run
directory after training, off the critical path) and the cache entry they also go into. The counts of every
stage go into the run's manifest as they are known, so a run that stops on bad data still records them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ift.cache import Prepared, PreparedCache, make_key, tokenizer_fingerprint
from ift.data import DataReport, apply_transforms, bad_record_policy, encode_records, read_sources, split_records
from ift.errors import DataError
from ift.host import PluginHost
from ift.recipe import Recipe
from ift.runtime import is_main_process, package_version, rank, world_size


class DataPreparation:
    """One run's data: :meth:`prepare` before training, :meth:`write_records` after it."""

    def __init__(
        self, recipe: Recipe, host: PluginHost, output_dir: Path, report: DataReport, echo: Callable[..., Any]
    ) -> None:
        self.recipe, self.host, self.output_dir, self.report, self.echo = recipe, host, output_dir, report, echo
        #: the training and eval records read by this run (None: they came from the cache)
        self.fresh_records: tuple[list[Any], list[Any]] | None = None
        self._cache_entry: Path | None = None

    def prepare(self, adapter: Any, tokenizer: Any, renderer: Any, manifest: dict[str, Any]) -> Prepared:
        """Read, clean, split, render and tokenize, or reuse an identical earlier preparation; ``manifest``
        gets the data counts (``data``) and what the cache did (``cache``)."""
        recipe, host, report = self.recipe, self.host, self.report
        key = self.cache_key(adapter, tokenizer, renderer)
        cache = PreparedCache()
        started = time.perf_counter()
        if key is not None and (hit := cached_entry(cache, key)) is not None:
            if "adapter" in hit.report:  # what the adapter learned from the training split (a classifier's labels)
                adapter.restore_data(hit.report["adapter"])
            manifest["data"] = hit.report
            manifest["cache"] = {"key": key, "hit": True, "seconds": round(time.perf_counter() - started, 3)}
            self.echo(f"data: reusing prepared data {cache.root / key}")
            if is_main_process():
                for saved in (cache.root / key).glob("data_report*"):
                    shutil.copyfile(saved, self.output_dir / saved.name)
                if (cache.root / key / "data").is_dir():
                    shutil.copytree(cache.root / key / "data", self.output_dir / "data", dirs_exist_ok=True)
            return hit
        records = read_sources(recipe, host, report)
        records = apply_transforms(recipe, host, records, report)
        train_records, eval_records = split_records(recipe, records, report)
        manifest["data"] = report.to_dict()
        if not train_records:
            raise DataError(
                f"no training examples are left after filtering and the eval split (counts: {report.to_dict()})"
            )
        self.fresh_records = (train_records, eval_records)
        trainer_cfg = recipe.trainer_config
        # before encoding: e.g. a classifier's label set and the input length its generation cuts prompts to
        adapter_state = adapter.prepare_data(train_records, max_length=trainer_cfg.max_length)
        # The examples are streamed into column files and mapped back (ift.examples): into the cache entry being
        # written, or into a temporary folder that is removed at once (the mapping keeps the data readable).
        caching = key is not None and is_main_process()
        folder = cache.begin(key) if caching and key is not None else Path(tempfile.mkdtemp(prefix="ift-prepared-"))
        bad = bad_record_policy(recipe)
        try:
            train_examples, _ = encode_records(
                train_records,
                renderer,
                adapter,
                tokenizer,
                trainer_cfg,
                "train",
                report,
                bad_records=bad,
                into=folder / "train",
            )
            eval_examples, eval_records = encode_records(
                eval_records,
                renderer,
                adapter,
                tokenizer,
                trainer_cfg,
                "eval",
                report,
                bad_records=bad,
                into=folder / "eval",
            )
            manifest["data"] = report.to_dict()
            if not len(train_examples):
                raise DataError(
                    f"every training example was dropped while tokenizing (trainer.max_length = "
                    f"{trainer_cfg.max_length}): {report.encoding['train']['reasons']}"
                )
            prepared = Prepared(train_examples, eval_examples, eval_records, report.to_dict())
            if adapter_state is not None:  # kept with the cached data, handed back to restore_data on a cache hit
                prepared.report["adapter"] = manifest["data"]["adapter"] = adapter_state
            manifest["cache"] = {"key": key, "hit": False, "seconds": round(time.perf_counter() - started, 3)}
            if caching and key is not None:
                self._cache_entry = cache.commit(key, folder, prepared)
        finally:  # a committed entry was renamed away; anything else goes
            shutil.rmtree(folder, ignore_errors=True)
        return prepared

    def write_records(self) -> None:
        """Write the records trained and evaluated on (``data/train.jsonl``, ``data/eval.jsonl``: what a later
        ``continual`` run replays) and let plugins write data reports (``ift_data_prepared``) for freshly
        prepared data. These files go into the cache entry too, and come back from it on a cache hit."""
        if not is_main_process() or self.fresh_records is None:
            return
        for name, records in zip(("train", "eval"), self.fresh_records, strict=True):
            write_jsonl(self.output_dir / "data" / f"{name}.jsonl", records)
        self.host.data_prepared(str(self.output_dir), *self.fresh_records)
        entry = self._cache_entry
        if entry is not None and entry.is_dir():
            for report in self.output_dir.glob("data_report*"):
                if report.is_file():
                    shutil.copyfile(report, entry / report.name)
            shutil.copytree(self.output_dir / "data", entry / "data", dirs_exist_ok=True)

    def cache_key(self, adapter: Any, tokenizer: Any, renderer: Any) -> str | None:
        """The cache key of this preparation: everything the prepared examples depend on (None: caching is off,
        or a source cannot fingerprint its content)."""
        recipe = self.recipe
        if not recipe.run.cache or os.environ.get("IFT_NO_CACHE") == "1":
            return None
        fingerprints = []
        for spec in recipe.data:
            source = spec.cls(spec.config, source_name=spec.source_name, base_dir=recipe.base_dir, host=self.host)
            fingerprint = source.content_fingerprint()
            if fingerprint is None:
                return None
            fingerprints.append(fingerprint)
        resolved = recipe.resolved()
        return make_key(
            {
                "ift": package_version("ift"),
                "cache_format": 2,
                "fingerprints": fingerprints,
                "plugins": self.host.data_plugins(resolved),
                "data": resolved["data"],
                "mixture": resolved["mixture"],
                "transforms": resolved["transforms"],
                "split": {
                    "seed": recipe.run.order_seed,
                    "fraction": recipe.eval.fraction,
                    "max_examples": recipe.eval.max_examples,
                },
                "template": resolved["template"],
                "template_hash": renderer.template_hash(),
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "model": resolved["model"],
                "length": [recipe.trainer_config.max_length, recipe.trainer_config.overlong],
            }
        )


def cached_entry(cache: PreparedCache, key: str) -> Prepared | None:
    """The cache entry ``key``. Under torchrun on one machine global rank 0 prepares the data and commits the
    entry, and every other rank waits for it and maps the same files (read-only memory maps: one copy in the
    page cache, not one per rank). A rank that waits longer than ``IFT_PREPARE_WAIT_SECONDS`` (default 3600)
    prepares its own copy, as ranks on other machines (which may not share the cache folder) do."""
    hit = cache.load(key)
    if hit is not None or is_main_process() or os.environ.get("LOCAL_WORLD_SIZE") != str(world_size()):
        return hit
    wait = float(os.environ.get("IFT_PREPARE_WAIT_SECONDS", "3600"))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if (cache.root / key / "complete.json").is_file() and (hit := cache.load(key)) is not None:
            return hit
    warnings.warn(
        f"rank {rank()}: rank 0's prepared data did not appear in {cache.root} within {wait:g} s "
        "(IFT_PREPARE_WAIT_SECONDS); preparing this rank's own copy",
        stacklevel=2,
    )
    return None


def write_jsonl(path: Path, records: list[Any]) -> None:
    """One JSON line per record (a mixture's repeats once each), streamed to a temporary file and renamed
    into place, so a million records never become one string in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    seen: set[tuple[str, str]] = set()
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            if (record.source, record.id) in seen:
                continue
            seen.add((record.source, record.id))
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
