"""The Python API, for notebooks and scripts: :func:`load_recipe`, :func:`run`, :func:`preview`, :func:`load_run`.

They go through exactly the code ``ift validate`` / ``ift run`` / ``ift preview`` use: the same recipe
validation, the same :class:`~ift.errors.IftError` messages (raised here; the CLI turns them into exit codes),
the same run directory, lock, manifest, events and metrics. Only the output differs: progress goes to stdout
(a notebook shows stderr as warnings), as a widget bar or plain lines in a notebook (see :mod:`ift.progress`).

Importing this module imports neither torch nor the pipeline; they are imported when a function is called.
The whole public Python API is this one module (over 500 lines), so ``help(ift.api)`` shows all of it.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ift.errors import RecipeError, RunError

if TYPE_CHECKING:
    from ift.builtin_plugins.inference.runs import TrainedRun
    from ift.host import PluginHost
    from ift.pipeline import Run
    from ift.previewing import PreviewResult
    from ift.progress import Progress
    from ift.recipe import Recipe
    from ift.records import Message

PathLike = str | os.PathLike[str]
#: ``overrides=``: ``["trainer.epochs=2", ...]`` exactly as ``--set`` takes them (values are TOML), or
#: ``{"trainer.epochs": 2, ...}`` with Python values.
Overrides = Sequence[str] | Mapping[str, Any]
#: ``progress=``: ``"auto"`` (a widget bar in a notebook when ipywidgets is installed, plain lines otherwise,
#: the live view on a terminal), ``"lines"`` (one plain line per logged step and evaluation), ``"off"``.
ProgressMode = Literal["auto", "lines", "off"]


# --- recipes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe and the plugin host it was validated with (``ift.run`` trains with that host).

    ``recipe`` is the validated :class:`ift.recipe.Recipe` (its sections and component configs);
    :meth:`resolved` is the recipe with every default filled in, as ``ift validate --json`` prints it.
    """

    recipe: Recipe
    host: PluginHost
    #: the recipe file, or the dict recipe as given (before overrides)
    source: Path | Mapping[str, Any]
    overrides: tuple[str, ...] = ()
    _own_host: bool = field(default=True, repr=False)

    @property
    def name(self) -> str:
        """``run.name``."""
        return self.recipe.run.name

    @property
    def path(self) -> Path | None:
        """The recipe file, or None for a dict recipe."""
        return self.recipe.path

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the recipe (data files, templates, local plugins) resolve against."""
        return self.recipe.base_dir

    @property
    def text(self) -> str:
        """The recipe's TOML text, as the run directory's ``recipe.toml`` keeps it."""
        return self.recipe.text

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in (secrets masked), as ``resolved.json`` keeps it."""
        return self.recipe.resolved()

    def with_overrides(self, overrides: Overrides) -> LoadedRecipe:
        """The same recipe validated again with ``overrides`` applied after this one's."""
        return load_recipe(
            self.source,
            overrides=[*self.overrides, *_override_strings(overrides)],
            base_dir=self.base_dir if isinstance(self.source, Mapping) else None,
            host=None if self._own_host else self.host,
        )

    def __repr__(self) -> str:
        where = str(self.path) if self.path else f"dict recipe, base_dir {self.base_dir}"
        return (
            f"LoadedRecipe({self.name!r}: {where}; {len(self.recipe.data)} data source(s), model adapter "
            f"{self.recipe.model.name!r}, trainer {self.recipe.trainer.name!r}"
            + (f", overrides {list(self.overrides)}" if self.overrides else "")
            + ")"
        )


def load_recipe(
    recipe: PathLike | Mapping[str, Any] | LoadedRecipe,
    *,
    overrides: Overrides = (),
    base_dir: PathLike | None = None,
    host: PluginHost | None = None,
) -> LoadedRecipe:
    """Read and validate a recipe as ``ift validate`` does; raise :class:`~ift.errors.RecipeError` listing every
    problem (the message ``ift validate`` prints after ``error:``).

    ``recipe`` is a TOML file's path or a dict shaped like the TOML (``{"data": [{...}], "model": {...}}``).
    Relative paths in a file resolve against the file's folder; in a dict against ``base_dir``, by default the
    current folder (a notebook's own folder). A dict is kept as TOML text (``recipe.toml`` in the run
    directory); ``pathlib.Path`` values become strings, ``None`` values are left out (the default applies).

    ``overrides`` are applied as ``--set`` applies them. ``host`` is the plugin host to use; by default a new
    one loads the installed plugins (and the recipe's ``[plugins] local`` files), as each ``ift`` command does.
    """
    return _load(recipe, overrides, base_dir, host, compile_template=True)


def _load(
    recipe: PathLike | Mapping[str, Any] | LoadedRecipe,
    overrides: Overrides,
    base_dir: PathLike | None,
    host: PluginHost | None,
    *,
    compile_template: bool,
) -> LoadedRecipe:
    if isinstance(recipe, LoadedRecipe):
        if base_dir is not None or host is not None:
            raise ValueError(
                "base_dir= and host= apply when a recipe is loaded; this one is loaded already "
                "(pass them to ift.load_recipe)"
            )
        return recipe.with_overrides(overrides) if overrides else recipe
    from ift.host import PluginHost

    own_host = host is None
    host = PluginHost() if host is None else host
    assignments = _override_strings(overrides)
    if isinstance(recipe, Mapping):
        root = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
        parsed = load_validated(dict(recipe), host, assignments, base_dir=root, compile_template=compile_template)
        source: Path | Mapping[str, Any] = copy.deepcopy(dict(recipe))
    else:
        source = Path(recipe)
        if base_dir is not None:
            raise RecipeError(
                "base_dir= is only for a dict recipe: a recipe file's relative paths resolve against its own folder",
                path=str(source),
            )
        parsed = load_validated(source, host, assignments, compile_template=compile_template)
    return LoadedRecipe(parsed, host, source, tuple(assignments), own_host)


def load_validated(
    recipe: Path | dict[str, Any],
    host: PluginHost,
    overrides: Sequence[str] = (),
    *,
    base_dir: Path | None = None,
    compile_template: bool = True,
) -> Recipe:
    """The recipe validated with its ``[plugins] local`` files registered in ``host`` first (what every
    command does; the CLI calls this too). A dict recipe needs ``base_dir``. ``compile_template`` builds the
    renderer as ``ift validate`` does (``ift run`` and ``ift preview`` build it later, in the run)."""
    from ift.recipe import load_recipe as load_file
    from ift.recipe import read_toml, validate_recipe

    if isinstance(recipe, dict):
        assert base_dir is not None
        text, raw = _dict_recipe_text(recipe, base_dir)
        root = base_dir
    else:
        raw, _ = read_toml(recipe)
        root = recipe.resolve().parent
    plugins = raw.get("plugins")
    local = plugins.get("local", []) if isinstance(plugins, dict) else []
    for name in local if isinstance(local, list) else []:
        if isinstance(name, str):
            _load_local_once(host, root / name)
    if not isinstance(recipe, dict):
        parsed = load_file(recipe, host, list(overrides))
    else:
        from ift.recipe import apply_override

        for assignment in overrides:
            apply_override(raw, assignment)
        parsed = validate_recipe(
            raw, host, base_dir=base_dir or Path.cwd(), path=None, text=text, overrides=list(overrides)
        )
    if compile_template:
        from ift.pipeline import make_renderer

        make_renderer(parsed, host)  # syntax errors are recipe errors
    return parsed


def _load_local_once(host: PluginHost, path: Path) -> None:
    """``host.load_local``, skipped when this very file is loaded already (a host given to several loads)."""
    info = host.plugins.get(f"local:{path.resolve().stem}")
    if info is not None and info.distribution == str(path.resolve()):
        return
    host.load_local(path)


def _dict_recipe_text(recipe: Mapping[str, Any], base_dir: Path) -> tuple[str, dict[str, Any]]:
    """TOML text for a dict recipe, and the dict read back from it: what is validated is exactly what
    ``recipe.toml`` will say."""
    from ift.recipe import tomllib
    from ift.toml_writer import dumps

    try:
        body = dumps(_plain(recipe, ""))
    except TypeError as exc:
        raise RecipeError(f"the dict recipe cannot be written as TOML: {exc}") from None
    try:
        raw = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - dumps writes valid TOML
        raise RecipeError(f"the dict recipe does not round-trip through TOML: {exc}") from None
    header = f"# a dict recipe given to ift.load_recipe; relative paths resolve against {base_dir}\n"
    return header + body, raw


def _plain(value: Any, where: str) -> Any:
    """Paths as strings, tuples as lists; anything else as it is (the TOML writer refuses what TOML lacks)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _override_strings(overrides: Overrides) -> list[str]:
    if isinstance(overrides, str):
        raise RecipeError(f"overrides= takes a list of KEY=VALUE strings or a dict, not the string {overrides!r}")
    if isinstance(overrides, Mapping):
        from ift.toml_writer import value_text

        out = []
        for key, value in overrides.items():
            try:
                out.append(f"{key}={value_text(_plain(value, str(key)), str(key))}")
            except TypeError as exc:
                raise RecipeError(f"overrides[{key!r}]: {exc}") from None
        return out
    return [str(o) for o in overrides]


# --- running -------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What :func:`execute_run` did: the run directory, and the metrics (None when a resume found the run
    already completed, so nothing ran) with the pipeline's :class:`~ift.pipeline.Run`."""

    output_dir: Path
    metrics: dict[str, Any] | None
    run: Run | None


def execute_run(
    recipe: Recipe,
    host: PluginHost,
    output_dir: Path | None,
    *,
    overwrite: bool = False,
    resume: str | None = None,
    echo: Callable[[str], Any] = print,
    make_progress: Callable[[], Progress] | None = None,
) -> RunOutcome:
    """One run into its run directory: ``ift run`` and :func:`run` both come here. Holds the directory's lock
    from before ``overwrite`` clears it to the end; ``resume`` is ``"auto"`` (the newest good checkpoint) or a
    checkpoint's path."""
    from ift.pipeline import Run, default_output_dir
    from ift.rundir import hold_run_directory, prepare_output_dir
    from ift.runtime import is_main_process

    if resume and not (output_dir or recipe.run.output_dir):
        raise RecipeError("--resume needs the run directory to continue: pass --output-dir (or set run.output_dir)")
    out = Path(output_dir) if output_dir else default_output_dir(recipe)
    main_process = is_main_process()  # under torchrun only rank 0 touches the run directory or prints
    # one process at a time in a run directory, from before --overwrite clears it to the end of the run
    with hold_run_directory(out, enabled=main_process, create=not resume):
        if resume:
            status_file = out / "status.json"
            if not status_file.is_file():
                raise RecipeError(f"--resume: {out} is not a run directory (no status.json)")
            if json.loads(status_file.read_text()).get("status") == "completed":
                echo(f"{out}: the run already completed; nothing to resume")
                return RunOutcome(out, None, None)
        elif main_process:
            prepare_output_dir(out, overwrite=overwrite)
        if main_process:
            echo(f"run directory: {out}" + (" (resuming)" if resume else ""))
        pipeline = Run(recipe, host, out, echo=echo, resume=resume, make_progress=make_progress)
        metrics = pipeline.execute()
    return RunOutcome(out, metrics, pipeline)


def run(
    recipe: PathLike | Mapping[str, Any] | LoadedRecipe,
    *,
    output_dir: PathLike | None = None,
    overrides: Overrides = (),
    overwrite: bool = False,
    resume: bool | str = False,
    progress: ProgressMode = "auto",
    keep_model: bool = True,
    base_dir: PathLike | None = None,
    host: PluginHost | None = None,
) -> RunResult:
    """Train and evaluate as the recipe says, exactly as ``ift run`` does, and return the :class:`RunResult`.

    ``recipe`` is a :class:`LoadedRecipe`, a path or a dict (then loaded with ``overrides``, ``base_dir`` and
    ``host`` as :func:`load_recipe` does). ``output_dir`` defaults to ``run.output_dir`` or
    ``runs/<name>-<time>``; an existing, non-empty one is refused unless ``overwrite``. ``resume=True`` continues
    the run in ``output_dir`` from its newest good checkpoint (``resume="path/to/checkpoint"``: from that one); a
    run that already completed is returned as it is. ``keep_model=False`` drops the trained model from memory at
    the end (``RunResult.model`` then loads the saved ``model/`` folder when first used).

    Errors are raised, never turned into exit codes: :class:`~ift.errors.RecipeError` (exit code 2 in the
    CLI), :class:`~ift.errors.DataError`, :class:`~ift.errors.PluginError`, :class:`~ift.errors.RunError`,
    :class:`~ift.errors.RunDirectoryInUse`, :class:`~ift.errors.Preempted` (SIGTERM: a checkpoint was saved),
    with the message ``ift run`` prints. A failed run leaves ``status.json`` saying why, as in the CLI.
    """
    from ift.progress import Progress
    from ift.runtime import is_main_process

    if progress not in ("auto", "lines", "off"):
        raise ValueError(f"progress must be 'auto', 'lines' or 'off' (got {progress!r})")
    # the template is compiled in the run, as `ift run` does: a broken one leaves a failed run directory
    loaded = _load(recipe, overrides, base_dir, host, compile_template=False)
    shown = progress != "off" and is_main_process()

    def echo(message: str) -> None:
        if shown:
            print(message, flush=True)

    def make_progress() -> Progress:
        stream = sys.stdout  # looked up now: a notebook replaces sys.stdout for each cell
        if progress == "lines":
            return Progress(0, stream=stream, interactive=False, notebook=False)
        return Progress(0, stream=stream, enabled=shown)

    resume_from = ("auto" if resume is True else str(resume)) if resume else None
    outcome = execute_run(
        loaded.recipe,
        loaded.host,
        Path(output_dir) if output_dir is not None else None,
        overwrite=overwrite,
        resume=resume_from,
        echo=echo,
        make_progress=make_progress,
    )
    trained = outcome.run.trained if outcome.run is not None and keep_model else None
    result = RunResult.from_run_dir(
        outcome.output_dir, host=loaded.host, ran=outcome.run is not None, resumed=bool(resume_from)
    )
    result._trained = trained
    if outcome.metrics is not None:
        echo(f"done: {outcome.output_dir}  (model: {outcome.output_dir / 'model'})")
    return result


def load_run(run_dir: PathLike, *, host: PluginHost | None = None) -> RunResult:
    """A run directory as a :class:`RunResult` (any status: read ``.status``); its model loads when first used."""
    return RunResult.from_run_dir(Path(run_dir), host=host, ran=False, resumed=False)


def preview(
    recipe: PathLike | Mapping[str, Any] | LoadedRecipe,
    *,
    n: int = 3,
    tokens: bool = False,
    overrides: Overrides = (),
    base_dir: PathLike | None = None,
    host: PluginHost | None = None,
) -> PreviewResult:
    """What ``ift preview`` shows, as data: the first ``n`` training examples rendered and tokenized as a run
    would (segments with their trainable flag, token counts; with ``tokens``, every token and its label
    state), the split's sizes and the template's warnings. Loads the tokenizer, never the model weights."""
    from ift.previewing import collect_preview

    loaded = _load(recipe, overrides, base_dir, host, compile_template=False)
    return collect_preview(loaded.recipe, loaded.host, n, tokens=tokens)


# --- results -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """A run directory and what is in it. The files are the truth: ``metrics`` is ``metrics.json``,
    ``status`` is ``status.json``'s; the paths name the directory's parts.

    ``model`` / ``tokenizer`` / :meth:`generate` use the model the run just trained, as it is in memory (no
    reload; a LoRA adapter unmerged); for a run opened with :func:`load_run`, or after ``keep_model=False``, the
    saved ``model/`` folder is loaded on first use, as ``ift generate`` loads it (:meth:`open`).
    """

    run_dir: Path
    status: str
    metrics: dict[str, Any]
    #: False when ``resume`` found the run already completed (nothing ran) or the run was opened by load_run
    ran: bool = True
    resumed: bool = False
    error: str | None = None
    _host: PluginHost | None = field(default=None, repr=False)
    _trained: tuple[Any, Any, Any, Any] | None = field(default=None, repr=False)
    _opened: TrainedRun | None = field(default=None, repr=False)

    @classmethod
    def from_run_dir(
        cls, run_dir: Path, *, host: PluginHost | None = None, ran: bool = False, resumed: bool = False
    ) -> RunResult:
        status_file = run_dir / "status.json"
        if not status_file.is_file():
            raise RunError(f"{run_dir} is not an ift run directory (no status.json)")
        status = json.loads(status_file.read_text(encoding="utf-8"))
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
        return cls(
            run_dir, str(status.get("status")), metrics, ran=ran, resumed=resumed, error=status.get("error"), _host=host
        )

    # --- the directory's parts ---------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        """``model/``: the trained model folder (plain transformers / peft load it)."""
        return self.run_dir / "model"

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def manifest_file(self) -> Path:
        return self.run_dir / "manifest.json"

    @property
    def events_file(self) -> Path:
        """``events.jsonl``: one line per logged step and per evaluation during training."""
        return self.run_dir / "events.jsonl"

    @property
    def recipe_file(self) -> Path:
        return self.run_dir / "recipe.toml"

    @property
    def resolved_file(self) -> Path:
        return self.run_dir / "resolved.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json``: versions, plugins, seeds, data counts, the model's description."""
        return dict(json.loads(self.manifest_file.read_text(encoding="utf-8")))

    def events(self) -> list[dict[str, Any]]:
        """The logged steps and evaluations, in order (``events.jsonl``)."""
        if not self.events_file.is_file():
            return []
        return [json.loads(line) for line in self.events_file.read_text(encoding="utf-8").splitlines() if line]

    @property
    def final(self) -> dict[str, Any]:
        """The final evaluation's overall metrics (``metrics["final"]["overall"]``; empty without one)."""
        return dict((self.metrics.get("final") or {}).get("overall") or {})

    @property
    def baseline(self) -> dict[str, Any]:
        """The untrained model's overall metrics (empty when ``eval.baseline`` is off)."""
        return dict((self.metrics.get("baseline") or {}).get("overall") or {})

    def table(self) -> str:
        """The before / after table ``ift run`` prints at the end."""
        from ift.report import before_after_table

        return before_after_table(self.metrics)

    # --- the model -------------------------------------------------------------------------------

    def open(self, *, device: str | None = None, reload: bool = False) -> TrainedRun:
        """The trained run ready for inference (adapter, model, tokenizer, the run's template). Without
        ``reload``: the model in memory when the run just trained it, else the saved ``model/`` folder loaded
        once (``device`` then picks where). Raises :class:`~ift.errors.RunError` for a run that did not
        complete."""
        from ift.builtin_plugins.inference.runs import TrainedRun, open_run, read_run

        if self._trained is not None and not reload:
            resolved, manifest = read_run(self.run_dir)
            adapter, model, tokenizer, renderer = self._trained
            trained_length = (resolved.get("trainer") or {}).get("max_length")
            if getattr(adapter, "generates_text", True) and isinstance(trained_length, int) and trained_length > 0:
                adapter.max_prompt_tokens = trained_length  # prompts cut as `ift generate` cuts them
            return TrainedRun(self.run_dir, resolved, manifest, adapter, model, tokenizer, renderer, self.model_dir)
        if self._opened is None or reload:
            from ift.host import PluginHost

            if self._host is None:
                self._host = PluginHost()
            self._opened = open_run(self.run_dir, self._host, device=device, merge=True)
        return self._opened

    @property
    def model(self) -> Any:
        """The trained model (see :meth:`open`)."""
        return self.open().model

    @property
    def tokenizer(self) -> Any:
        """The run's tokenizer (see :meth:`open`)."""
        return self.open().tokenizer

    def generate(self, prompt: str | Sequence[Message], *, system: str | None = None, max_new_tokens: int = 64) -> str:
        """The trained model's greedy answer, the prompt rendered with the run's own template (as ``ift
        generate`` does): ``prompt`` is the user's message, or a conversation ending with a user turn."""
        from ift.records import Message

        trained = self.open()
        messages = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages.insert(0, Message("system", system))
        return trained.generate([trained.prompt(messages)], max_new_tokens=max_new_tokens, batch_size=1)[0]

    def release(self) -> None:
        """Drop the model this result holds (the files stay); a later use loads the saved folder."""
        self._trained = None
        self._opened = None

    def _repr_html_(self) -> str:
        """Jupyter's view: the status, the directory and the before / after table."""
        from html import escape

        head = f"<p><b>{escape(self.status)}</b>: <code>{escape(str(self.run_dir))}</code>"
        head += f" ({escape(self.error)})</p>" if self.error else "</p>"
        return head + (f"<pre>{escape(self.table())}</pre>" if self.metrics else "")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.final.items())
        return (
            f"RunResult({self.status}: {self.run_dir}"
            + (f"; final {shown}" if shown else "")
            + (f"; error: {self.error}" if self.error else "")
            + ")"
        )
