"""``ift run``: one run from recipe to run directory, stage by stage (see DESIGN.md section 2)."""

from __future__ import annotations

import datetime as dt
import json
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ift.cache import tokenizer_fingerprint
from ift.components import Metric, Origin, origin_of, set_origin
from ift.data import DataReport, data_notes, encode_records, stop_strings
from ift.errors import DataError, IftError, Preempted
from ift.evaluation import Evaluator
from ift.host import PluginHost
from ift.preparation import DataPreparation
from ift.progress import Progress
from ift.recipe import Recipe
from ift.redact import install as mask_credentials_in_logs
from ift.redact import redact
from ift.resume import check_same_run, checkpoint_step, choose_checkpoint, run_identity, trim_events
from ift.rundir import RunDirectory
from ift.runtime import finish_distributed, is_main_process, package_version, seed_everything, world_size
from ift.training import TrainContext

#: The sampled generations of each stage evaluated so far; a resume takes back those it does not repeat.
SAMPLES_FILE = "samples.json"
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "tokenizers",
    "pluggy",
    "jinja2",
    "scikit-learn",
    "pydantic",
)


def default_output_dir(recipe: Recipe) -> Path:
    if recipe.run.output_dir:
        path = Path(recipe.run.output_dir)
        return path if path.is_absolute() else recipe.base_dir / path
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.run.name}-{stamp}"


def make_renderer(recipe: Recipe, host: PluginHost) -> Any:
    return recipe.template.cls(
        recipe.template.config, base_dir=recipe.base_dir, prepare_jinja_env=host.prepare_jinja_env
    )


class Run:
    """Holds the stages' results so the CLI can print them; ``execute()`` does the work."""

    def __init__(
        self,
        recipe: Recipe,
        host: PluginHost,
        output_dir: Path,
        *,
        echo: Any = print,
        interactive: bool | None = None,
        resume: str | None = None,
        make_progress: Callable[[], Progress] | None = None,
    ) -> None:
        self.recipe, self.host, self.output_dir = recipe, host, output_dir
        self.resume = resume
        self._make_progress = make_progress  # the Python API's progress view (stdout, a notebook's); else stderr's
        #: what the run trained, once it has: the adapter, the model as it is in memory, tokenizer, renderer
        self.trained: tuple[Any, Any, Any, Any] | None = None
        self._stop_requested = False
        self.echo = echo if is_main_process() else (lambda *a, **k: None)
        self.interactive = interactive
        self.report = DataReport()
        self.data = DataPreparation(recipe, host, output_dir, self.report, self.echo)
        self.metrics: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}
        self._evaluator: Evaluator | None = None  # the held-out split's, whose samples metrics.json keeps

    def execute(self) -> dict[str, Any]:
        mask_credentials_in_logs()  # libraries log the URLs they retry, an HF_ENDPOINT's credentials included
        main = is_main_process()
        rundir = RunDirectory(self.output_dir, enabled=main)
        self.rundir = rundir
        status, error = "failed", None
        previous = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._stage_files(rundir)
            self.host.run_start(str(self.output_dir), self.recipe.resolved())
            self._run(rundir)
            status = "completed"
            return self.metrics
        except Preempted as exc:
            status, error = "interrupted", str(exc)
            raise
        except IftError as exc:
            error = str(exc)
            raise
        except KeyboardInterrupt:
            error = "interrupted"
            raise
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")  # a bug's message may quote a URL with credentials
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
            self.manifest["finished"] = time.time()
            rundir.write_json("manifest.json", self.manifest)
            rundir.status(status, **({"error": error} if error else {}))
            rundir.close()
            self.host.run_end(str(self.output_dir), status, self.metrics)
            finish_distributed()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._stop_requested = True  # the trainer saves a checkpoint at the next step and stops
        self.echo("SIGTERM: saving a checkpoint at the end of this step, then stopping")

    def _stage_files(self, rundir: RunDirectory) -> None:
        recipe = self.recipe
        old_manifest = self.output_dir / "manifest.json"
        if self.resume and old_manifest.is_file():
            # keep the original recipe files: the checkpoint's identity check decides if this is the same run
            self.manifest = json.loads(old_manifest.read_text())
            self.manifest.setdefault("resumes", []).append(
                {"at": time.time(), "command": [redact(a) for a in sys.argv], "overrides": recipe.overrides}
            )
            return
        rundir.write_text("recipe.toml", recipe.text)
        rundir.write_json("resolved.json", recipe.resolved())
        template_file = getattr(recipe.template.config, "path", None)
        if isinstance(template_file, str):  # keep the exact template text: inference rebuilds the renderer from it
            source = Path(template_file).expanduser()
            source = source if source.is_absolute() else recipe.base_dir / source
            if source.is_file():  # a missing file is reported when the renderer is built
                rundir.write_text(f"template/{source.name}", source.read_text(encoding="utf-8"))
        self.manifest = {
            "ift": package_version("ift"),
            "hook_api": _hook_api(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "command": [redact(a) for a in sys.argv],
            "seed": recipe.run.seed,
            "data_seed": recipe.run.order_seed,
            "packages": {p: package_version(p) for p in PACKAGES},
            "plugins": self.host.describe(),
            "git": _git_sha(recipe.base_dir),
            "started": rundir.started,
        }
        rundir.write_json("manifest.json", self.manifest)

    def _run(self, rundir: RunDirectory) -> None:
        progress = self.progress = (
            self._make_progress()
            if self._make_progress is not None
            else Progress(0, interactive=self.interactive, enabled=is_main_process())
        )
        try:
            self._stages(rundir, progress)
        finally:
            progress.close()

    def _stages(self, rundir: RunDirectory, progress: Progress) -> None:
        recipe, host = self.recipe, self.host
        progress.stage("preparing data")
        _quiet_library_progress_bars()
        seed_everything(recipe.run.seed)
        adapter = recipe.model.cls(recipe.model.config, base_dir=recipe.base_dir)
        tokenizer = adapter.load_tokenizer()
        renderer = make_renderer(recipe, host)
        renderer.bind(tokenizer)
        self.manifest["template"] = {"name": recipe.template.name, "hash": renderer.template_hash()}
        prepared = self.data.prepare(adapter, tokenizer, renderer, self.manifest)
        train_examples, eval_examples, eval_records = prepared.train, prepared.eval, prepared.eval_records
        identity = run_identity(
            recipe.resolved(),
            data=prepared.report["sources"],
            tokenizer=tokenizer_fingerprint(tokenizer),
            template=renderer.template_hash(),
            world_size=world_size(),
            plugins=host.data_plugins(recipe.resolved(), trainer=True),
        )
        checkpoint = None
        if self.resume:
            checkpoint = choose_checkpoint(self.output_dir, self.resume)
            if checkpoint is None:
                self.echo("resume: no checkpoint in this run directory; starting from the beginning")
            else:
                check_same_run(checkpoint, identity)
            # the steps after the checkpoint (every step, without one) are logged again by the resumed run
            trim_events(self.output_dir / "events.jsonl", checkpoint_step(checkpoint) if checkpoint else 0)
        self.echo(
            f"data: {len(train_examples)} train / {len(eval_examples)} eval examples from {len(recipe.data)} source(s)"
        )
        for warning in prepared.report.get("encoding", {}).get("train", {}).get("warnings", []):
            self.echo(f"data: warning: {warning}")
        for note in data_notes(prepared.report):
            self.echo(f"note: {note}")
        self._check_preference_data(train_examples)

        progress.stage("loading model")
        seed_everything(recipe.run.seed)
        model = adapter.load_model(tokenizer)
        self.manifest["model"] = {**adapter.describe(), **_param_counts(model), "device": str(_device(model))}
        rundir.write_json("manifest.json", self.manifest)
        described = self.manifest["model"]
        self.echo(f"model: {described.get('summary', described.get('origin', recipe.model.name))}")
        self.echo(
            f"       {described['parameters']:,} parameters ({described['trainable_parameters']:,} trainable) "
            f"on {described['device']}"
        )

        metrics: list[Metric] = []
        for i, name in enumerate(recipe.eval.metrics):
            registered = host.get("metric", name)
            config = recipe.metric_config(name, registered.cls)  # [eval.metric_options.NAME], or the defaults
            if origin_of(config) is None:
                set_origin(
                    config,
                    Origin(
                        registered.plugin,
                        registered.distribution,
                        registered.version,
                        "metric",
                        name,
                        f"eval.metrics[{i}]",
                    ),
                )
            metrics.append(cast(Metric, registered.cls(config)))
        self.manifest["metrics"] = {
            m.name: {
                "options": m.config.model_dump(mode="json"),
                "plugin": host.get("metric", m.name).plugin,
                "distribution": host.get("metric", m.name).distribution,
                "version": host.get("metric", m.name).version,
            }
            for m in metrics
        }
        evaluator = Evaluator(
            adapter=adapter,
            tokenizer=tokenizer,
            renderer=renderer,
            metrics=metrics,
            records=eval_records,
            examples=eval_examples,
            batch_size=recipe.eval.batch_size,
            max_new_tokens=recipe.eval.max_new_tokens,
            stop=stop_strings(renderer, eval_records[0]) if eval_records else [],
            samples=recipe.eval.samples,
        )
        results: dict[str, Any] = {}
        self._evaluator = evaluator
        samples_file = self.output_dir / SAMPLES_FILE
        if checkpoint is not None and samples_file.is_file():
            evaluator.restore_samples(json.loads(samples_file.read_text()), up_to_step=checkpoint_step(checkpoint))
        baseline_file = self.output_dir / "baseline.json"
        if recipe.eval.baseline and eval_records and metrics:
            if checkpoint is not None and baseline_file.is_file():
                results["baseline"] = json.loads(baseline_file.read_text())
            else:
                results["baseline"] = self._evaluate(evaluator, model, "baseline")
                rundir.write_json("baseline.json", results["baseline"])

        progress.stage("training")

        def log_step(event: dict[str, Any]) -> None:
            rundir.event(event)
            progress.step(event["step"], event)
            host.step_end(str(self.output_dir), event)

        trainer = recipe.trainer.cls(recipe.trainer.config)
        ctx = TrainContext(
            model=model,
            tokenizer=tokenizer,
            adapter=adapter,
            train_examples=train_examples,
            eval_examples=eval_examples,
            seed=recipe.run.order_seed,
            run_dir=self.output_dir,
            log_step=log_step,
            evaluate=lambda m, stage: self._evaluate(evaluator, m, stage),
            progress=progress,
            checkpoint_dir=self.output_dir / "checkpoints",
            resume_from=checkpoint,
            identity=identity,
            should_stop=lambda: self._stop_requested,
            encode_records=lambda records: encode_records(
                records, renderer, adapter, tokenizer, recipe.trainer_config, "extra", DataReport()
            )[0],
            evaluate_records=lambda m, records, stage: self._evaluate(
                self._evaluator_for(records, adapter, tokenizer, renderer, metrics), m, stage
            ),
            eval_records=list(eval_records),
        )
        preference = _preference_evaluation(recipe, ctx)
        if preference is not None:  # held-out pair figures before training (the objective's own)
            results["preference"] = {"baseline": preference.start_evaluation(ctx, model)}
        result = trainer.train(ctx)
        self.trained = (adapter, result.model, tokenizer, renderer)
        if eval_records and metrics:
            results["final"] = self._evaluate(evaluator, result.model, "final")
        if preference is not None and results["preference"]["baseline"]:
            results["preference"]["final"] = preference.evaluate(result.model)
            self.echo(_preference_line(results["preference"]))
        results["train"] = {"steps": result.steps, **result.summary}
        results["samples"] = evaluator.sample_rows()
        # what each source contributed to training (examples, tokens), next to the per-source eval metrics
        results["data"] = {"mixture": prepared.report.get("mixture", {})}
        progress.stage("writing reports")
        self.data.write_records()
        progress.stage("saving model")
        if is_main_process():

            def write_model(path: Path) -> None:
                adapter.save(result.model, tokenizer, path)
                facts = adapter.finish_saved_folder(
                    path,
                    final_path=self.output_dir / "model",
                    tokenizer=tokenizer,
                    renderer=renderer,
                    records=[*eval_records[:256], *(self.data.fresh_records or ([], []))[0][:64]],  # checked on
                    max_length=recipe.trainer_config.max_length,
                )
                if facts:
                    self.manifest["model_folder"] = facts

            rundir.save_dir("model", write_model)
        self.metrics = results
        rundir.write_json("metrics.json", results)

    def _check_preference_data(self, examples: Any) -> None:
        """A trainer of sequences (``sft`` and its kin) learns a pair's chosen answer, said once; it would learn an
        unpaired undesirable answer as a good one, which is refused."""
        from ift.examples import kinds

        objective = getattr(self.recipe.trainer.cls, "objective_class", None)
        if objective is not None and getattr(objective, "examples", "sequence") == "preference":
            return
        counts = Counter(kinds(examples))
        name = self.recipe.trainer.name
        if counts["undesirable"]:
            raise DataError(
                f"trainer {name!r} trains on sequences, but {counts['undesirable']} training example(s) "
                "are unpaired completions labelled undesirable (false), which it would learn as good "
                "answers; use trainer 'kto', or leave them out"
            )
        if counts["pair"]:
            self.echo(
                f"note: trainer {name!r} trains on sequences: the chosen answers of {counts['pair']} "
                "preference pair(s) are learned, their rejected answers unused (dpo / orpo / kto use both)"
            )

    def _evaluator_for(
        self, records: list[Any], adapter: Any, tokenizer: Any, renderer: Any, metrics: list[Metric]
    ) -> Evaluator:
        recipe = self.recipe
        examples, records = encode_records(
            records, renderer, adapter, tokenizer, recipe.trainer_config, "extra", DataReport()
        )
        return Evaluator(
            adapter=adapter,
            tokenizer=tokenizer,
            renderer=renderer,
            metrics=metrics,
            records=records,
            examples=examples,
            batch_size=recipe.eval.batch_size,
            max_new_tokens=recipe.eval.max_new_tokens,
            stop=stop_strings(renderer, records[0]) if records else [],
            samples=0,
        )

    def _evaluate(self, evaluator: Evaluator, model: Any, stage: str) -> dict[str, Any]:
        progress: Progress | None = getattr(self, "progress", None)
        previous = progress._stage if progress is not None else ""
        if progress is not None:
            progress.stage(f"evaluating {stage}")
        result = evaluator(model, stage)
        kept = self._evaluator
        if kept is not None and evaluator is kept and stage in kept.generations and kept.samples:
            self.rundir.write_json(SAMPLES_FILE, kept.saved_samples())
        if progress is not None:
            progress.evaluation(stage, result)
            if stage.startswith("step-"):
                progress.stage(previous)
        if result:
            self.host.evaluate_end(str(self.output_dir), stage, result)
            if stage.startswith("step-"):
                self.rundir.event({"eval": stage, **result["overall"]})
        return result


def _preference_evaluation(recipe: Recipe, ctx: TrainContext) -> Any:
    """For a trainer whose objective trains on preference examples and reports held-out figures
    (``start_evaluation`` / ``evaluate``), a second instance of that objective to measure them; else None."""
    cls = getattr(recipe.trainer.cls, "objective_class", None)
    if (
        cls is None
        or getattr(cls, "examples", "") != "preference"
        or not hasattr(cls, "start_evaluation")
        or not len(ctx.eval_examples)
        or not is_main_process()
    ):
        return None
    config = recipe.trainer.config
    made = cls(cls.Config.model_construct(**{key: getattr(config, key) for key in cls.Config.model_fields}))
    made.training = config
    return made


def _preference_line(figures: dict[str, Any]) -> str:
    before, after = figures["baseline"], figures["final"]
    return (
        f"preference (held-out, {after.get('n', 0)}): reward accuracy {before['reward_accuracy']:.3f} -> "
        f"{after['reward_accuracy']:.3f}, reward margin {before['reward_margin']:.3f} -> "
        f"{after['reward_margin']:.3f}, chosen logp {before['chosen_logp']:.2f} -> {after['chosen_logp']:.2f}, "
        f"rejected logp {before['rejected_logp']:.2f} -> {after['rejected_logp']:.2f}"
    )


def _quiet_library_progress_bars() -> None:
    """The run's own view reports progress; transformers' bars (writing shards...) would interleave with it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()


def _param_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _hook_api() -> int:
    from ift.hookspecs import HOOK_API_VERSION

    return HOOK_API_VERSION


def _git_sha(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
