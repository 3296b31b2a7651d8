"""Recipes: TOML in, a validated :class:`Recipe` out, with every problem reported at once.

Components are named by their registered name; each component's keys are validated by the ``Config``
model of the class that owns the name, so plugins validate their own sections.

The recipe format's sections, loading and validation stay in this one module (over 500 lines): validation
checks sections against each other (a trainer against ``[eval]`` and ``[model]``, ``[mixture]`` against the
``[[data]]`` weights) and reports every problem of every section at once. The ``[mixture]`` rules live with
the mixture arithmetic (:mod:`ift.mixture`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ift.components import Origin, set_origin
from ift.config import ComponentConfig, TrainerConfig
from ift.errors import Problem, RecipeError
from ift.host import KIND_LABELS, PluginHost, did_you_mean
from ift.mixture import MixtureSection, check_section, default_strategy
from ift.redact import MASK, has_credentials, redact

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["Recipe", "apply_override", "read_toml", "validate_recipe"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("run", "data", "mixture", "transforms", "template", "model", "trainer", "eval", "plugins")


class RunSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(42, description="Model initialisation and everything random in training.")
    data_seed: int | None = Field(None, description="Eval split and batch order; defaults to seed.")

    @property
    def order_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    output_dir: str | None = None
    cache: bool = Field(True, description="Reuse prepared (tokenized) data across runs; see IFT_CACHE_DIR.")
    tensorboard: bool = Field(True, description="Log to <run_dir>/tensorboard/.")


class EvalSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of each source held out for eval.")
    max_examples: int | None = Field(200, gt=0, description="Cap on held-out examples (all sources).")
    metrics: list[str] = Field(default_factory=lambda: ["loss", "exact_match"])
    metric_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="A metric's options by its name ([eval.metric_options.exact_match] "
        "normalize = false), validated by the metric's own Config; the metric must be in metrics.",
    )
    baseline: bool = Field(True, description="Also evaluate before training.")
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(32, gt=0)
    samples: int = Field(3, ge=0, description="Generations printed and kept in metrics.json.")


class PluginsSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    local: list[str] = Field(default_factory=list, description="One-file plugins, relative to the recipe.")


# Component used when a section does not name one.
DEFAULTS = {"template": "alpaca", "model": "causal-lm", "trainer": "sft"}

# Keys of a [[data]] table that the core owns; the rest belong to the source's Config.
DATA_KEYS = ("source", "name", "weight", "task", "split")


@dataclass
class Component:
    """A named component from the recipe with its validated config."""

    name: str
    cls: type
    config: ComponentConfig


@dataclass
class DataSpec(Component):
    source_name: str = ""
    weight: float = 1.0
    task: str | None = None
    split: Literal["auto", "train", "eval"] = "auto"


@dataclass
class Recipe:
    path: Path | None
    base_dir: Path
    raw: dict[str, Any]
    text: str
    run: RunSection
    data: list[DataSpec]
    transforms: list[Component]
    template: Component
    model: Component
    trainer: Component
    eval: EvalSection
    plugins: PluginsSection
    overrides: list[str] = field(default_factory=list)
    mixture: MixtureSection = field(default_factory=lambda: MixtureSection.model_validate({}))
    #: the validated config of every metric in ``eval.metrics`` (its ``[eval.metric_options.NAME]``, defaults
    #: filled in), by name
    metric_configs: dict[str, ComponentConfig] = field(default_factory=dict)

    def metric_config(self, name: str, cls: Any) -> ComponentConfig:
        """The config to build metric ``name`` (class ``cls``) with: its recipe options, or its defaults."""
        config = self.metric_configs.get(name)
        return config if config is not None else cls.Config()

    @property
    def trainer_config(self) -> TrainerConfig:
        assert isinstance(self.trainer.config, TrainerConfig)
        return self.trainer.config

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in (secrets masked by their field types)."""

        def dump(c: Component, key: str) -> dict[str, Any]:
            return {key: c.name, **c.config.model_dump(mode="json")}

        return {
            "run": self.run.model_dump(mode="json"),
            "data": [
                {
                    "source": d.name,
                    "name": d.source_name,
                    "weight": d.weight,
                    "task": d.task,
                    "split": d.split,
                    **d.config.model_dump(mode="json"),
                }
                for d in self.data
            ],
            "mixture": {
                **self.mixture.model_dump(mode="json"),
                "strategy": self.mixture.strategy or default_strategy(d.weight for d in self.data),
            },
            "transforms": [dump(t, "name") for t in self.transforms],
            "template": dump(self.template, "name"),
            "model": dump(self.model, "adapter"),
            "trainer": dump(self.trainer, "name"),
            "eval": {
                **self.eval.model_dump(mode="json"),
                "metric_options": {
                    name: self.metric_configs[name].model_dump(mode="json")
                    for name in self.eval.metric_options
                    if name in self.metric_configs
                },
            },
            "plugins": self.plugins.model_dump(mode="json"),
            "overrides": self.overrides,
        }


# --- loading -----------------------------------------------------------------------------------


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror}", path=str(path)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}, column {column}); save the recipe as UTF-8",
            path=str(path),
        ) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"not valid TOML: {exc}", path=str(path)) from None


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``key.path=value`` (``data.0.path=x`` or ``data[0].path=x``); value parsed as TOML."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE")
    key, value_text = assignment.split("=", 1)
    parts: list[str | int] = []
    for name, index in _SEGMENT.findall(key.strip()):
        parts.append(int(index) if index else (int(name) if name.isdigit() else name))
    if not parts:
        raise RecipeError(f"--set {assignment!r}: empty key")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    node: Any = raw
    for i, part in enumerate(parts):
        where = ".".join(map(str, parts[:i])) or "the recipe"
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"--set {key}: {where} is a value, not a table")
        if isinstance(node, list):
            if not isinstance(part, int):
                raise RecipeError(
                    f"--set {key}: {where} is a list of {len(node)} table(s); index it by number, "
                    f"e.g. {where}.0.{part} or {where}[0].{part}"
                )
            if part >= len(node):
                raise RecipeError(f"--set {key}: index {part} is out of range ({where} has {len(node)} item(s))")
        elif isinstance(part, int):
            raise RecipeError(f"--set {key}: {where} is a table, not a list; it has no item {part}")
        container: Any = node  # a list indexed by int or a table by name, as checked above
        if i == len(parts) - 1:
            container[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = [] if isinstance(parts[i + 1], int) else {}
            node = container[part]


def load_recipe(path: Path | str, host: PluginHost, overrides: list[str] = ()) -> Recipe:  # type: ignore[assignment]
    path = Path(path)
    raw, text = read_toml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_recipe(raw, host, base_dir=path.resolve().parent, path=path, text=text, overrides=list(overrides))


# --- validation --------------------------------------------------------------------------------


def _key(prefix: str, loc: tuple[Any, ...]) -> str:
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _problems_from(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = _key(prefix, err["loc"])
        if err["type"] == "extra_forbidden":
            fields = _field_names(model, err["loc"][:-1])
            problems.append(Problem(key, f"unknown key{did_you_mean(loc[-1], fields)}"))
        elif err["type"] == "missing":
            problems.append(Problem(key, "required key is missing"))
        elif err["type"] == "value_error":  # a validator's own message says what is wrong; no pydantic prefix
            problems.append(Problem(key, str(err.get("ctx", {}).get("error", err["msg"]))))
        else:
            problems.append(Problem(key, f"{err['msg']} (got {err.get('input')!r})"))
    return problems


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:  # walk into nested models where we can, through Optional[...] and unions
        info = model.model_fields.get(str(part))
        annotation = getattr(info, "annotation", None)
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return list(model.model_fields)


def _section(raw: Any, key: str, model: type[BaseModel], problems: list[Problem]) -> Any:
    if raw is not None and not isinstance(raw, dict):
        problems.append(Problem(key, f"must be a table, got {type(raw).__name__}"))
        raw = None
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        problems.extend(_problems_from(exc, key, model))
        return model.model_construct()


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+(:[A-Za-z_][\w.]*)?$|^[\w.]+:[A-Za-z_][\w.]*$")
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_key|credentials?)$", re.I)


def looks_like_import_path(name: str) -> bool:
    return bool(_IMPORT_PATH.match(name))


def find_secrets(value: Any, key: str = "", found: set[str] | None = None) -> list[Problem]:
    """Recipe values that look like credentials. Recipes are copied into run directories and shared;
    secrets belong in the environment. Each value flagged is added to ``found`` so that no other message
    echoes it."""
    problems = []
    if isinstance(value, dict):
        for k, v in value.items():
            problems += find_secrets(v, f"{key}.{k}" if key else str(k), found)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problems += find_secrets(v, f"{key}[{i}]", found)
    elif isinstance(value, str) and value:
        name = key.rsplit(".", 1)[-1]
        if _SECRET_KEY.search(name) or has_credentials(value):
            if found is not None:
                found.add(value)
            problems.append(
                Problem(
                    key,
                    "looks like a secret, and recipes are copied into run directories: put "
                    "it in an environment variable instead (HF_TOKEN for the Hugging Face Hub, "
                    "or the variable the plugin documents) and remove it from the recipe",
                )
            )
    return problems


def _scrub(problems: list[Problem], secrets: set[str]) -> list[Problem]:
    """The problems with every flagged secret value masked, wherever another key's message quotes it."""

    def clean(text: str) -> str:
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, MASK).replace(repr(secret)[1:-1], MASK)
        return redact(text)

    return [replace(p, message=clean(p.message)) for p in problems]


def _component(
    host: PluginHost,
    kind: str,
    table: dict[str, Any],
    name_key: str,
    key: str,
    problems: list[Problem],
    own_keys: tuple[str, ...] = (),
    context: dict[str, Any] | None = None,
) -> Component | None:
    """Validate one component's table with its own Config. The validation context holds ``host`` and, for
    ``context``, validated sections a component may check itself against (a trainer sees ``eval``)."""
    name = table.get(name_key)
    if not isinstance(name, str):
        problems.append(
            Problem(
                f"{key}.{name_key}",
                f"required: the {KIND_LABELS[kind]}'s name; available: {', '.join(host.names(kind))}",
            )
        )
        return None
    if name not in host.registry[kind] and looks_like_import_path(name):
        problems.append(
            Problem(
                f"{key}.{name_key}",
                f"{name!r} looks like an import path; recipes name "
                "registered components only (a recipe is data, not code): register the class "
                "from a plugin and use its name",
            )
        )
        return None
    if name not in host.registry[kind]:
        problems.append(host.unknown_problem(f"{key}.{name_key}", kind, name))
        return None
    registered = host.registry[kind][name]
    body = {k: v for k, v in table.items() if k != name_key and k not in own_keys}
    try:
        config = registered.cls.Config.model_validate(body, context={"host": host, **(context or {})})
    except ValidationError as exc:
        problems.extend(_problems_from(exc, key, registered.cls.Config))
        return None
    # a component built from this config names its plugin and this table when its own code raises
    set_origin(
        config, Origin(registered.plugin, registered.distribution, registered.version, KIND_LABELS[kind], name, key)
    )
    return Component(name, registered.cls, config)


def validate_recipe(
    raw: dict[str, Any],
    host: PluginHost,
    *,
    base_dir: Path,
    path: Path | None = None,
    text: str = "",
    overrides: list[str] | None = None,
) -> Recipe:
    """Validate a parsed recipe; raise one RecipeError listing every problem."""
    secrets: set[str] = set()
    problems: list[Problem] = find_secrets(raw, found=secrets)
    for key in raw:
        if key not in SECTIONS:
            problems.append(
                Problem(key, f"unknown section{did_you_mean(key, SECTIONS)}; sections are {', '.join(SECTIONS)}")
            )
    run = _section(raw.get("run"), "run", RunSection, problems)
    eval_section = _section(raw.get("eval"), "eval", EvalSection, problems)
    plugins = _section(raw.get("plugins"), "plugins", PluginsSection, problems)

    raw_eval: dict[str, Any] = raw["eval"] if isinstance(raw.get("eval"), dict) else {}
    raw_metrics = raw_eval.get("metrics", eval_section.metrics)
    for i, metric in enumerate(raw_metrics if isinstance(raw_metrics, list) else []):
        if isinstance(metric, str) and metric not in host.registry["metric"]:
            problems.append(host.unknown_problem(f"eval.metrics[{i}]", "metric", metric))

    metric_configs = _metric_configs(host, eval_section, problems)

    data: list[DataSpec] = []
    tables = raw.get("data")
    if tables is None:
        problems.append(Problem("data", "at least one [[data]] table is required"))
        tables = []
    elif not isinstance(tables, list):
        problems.append(Problem("data", "must be an array of tables: write [[data]], not [data]"))
        tables = []
    seen_names: dict[str, int] = {}
    for i, table in enumerate(tables):
        key = f"data[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        comp = _component(host, "source", table, "source", key, problems, own_keys=DATA_KEYS[1:])
        weight = table.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            problems.append(Problem(f"{key}.weight", f"must be a positive number (got {weight!r})"))
            weight = 1.0
        split = table.get("split", "auto")
        if split not in ("auto", "train", "eval"):
            problems.append(Problem(f"{key}.split", f"must be 'auto', 'train' or 'eval' (got {split!r})"))
        source_name = table.get("name") or _default_source_name(table, i)
        if source_name in seen_names:
            problems.append(
                Problem(
                    f"{key}.name",
                    f"{source_name!r} is already the name of "
                    f"data[{seen_names[source_name]}]; give each table a distinct name",
                )
            )
        seen_names[source_name] = i
        task = table.get("task")
        if comp is not None:
            data.append(
                DataSpec(
                    comp.name,
                    comp.cls,
                    comp.config,
                    source_name=str(source_name),
                    weight=float(weight),
                    task=task,
                    split=split,
                )
            )

    transforms: list[Component] = []
    t_tables = raw.get("transforms", [])
    if not isinstance(t_tables, list):
        problems.append(Problem("transforms", "must be an array of tables: write [[transforms]]"))
        t_tables = []
    for i, table in enumerate(t_tables):
        comp = _component(
            host, "transform", table if isinstance(table, dict) else {}, "name", f"transforms[{i}]", problems
        )
        if comp:
            transforms.append(comp)

    template_table = _table(raw, "template", problems)
    template_table.setdefault("name", "jinja" if "path" in template_table else DEFAULTS["template"])
    template = _component(host, "renderer", template_table, "name", "template", problems)
    model_table = _table(raw, "model", problems)
    model_table.setdefault("adapter", DEFAULTS["model"])
    model: Component | None = None
    if "model" not in raw:
        problems.append(
            Problem(
                "model",
                "missing: training needs a [model] table (name_or_path or from_config); "
                "a recipe only for `ift data build` / `ift data report` needs none",
            )
        )
    else:
        model = _component(host, "model_adapter", model_table, "adapter", "model", problems)
    trainer_table = _table(raw, "trainer", problems)
    trainer_table.setdefault("name", DEFAULTS["trainer"])
    # A trainer may check its keys against the evaluation (e.g. an early-stopping metric among eval.metrics)
    # and the model adapter (None when [model] is invalid; e.g. a trainer that needs a causal LM).
    trainer = _component(
        host, "trainer", trainer_table, "name", "trainer", problems, context={"eval": eval_section, "model": model}
    )

    before = len(problems)
    mixture = _section(raw.get("mixture"), "mixture", MixtureSection, problems)
    mixture = check_section(
        None if len(problems) > before else mixture, [d.weight for d in data], raw.get("data"), problems
    )

    if eval_section.fraction == 0 and not any(d.split == "eval" for d in data) and any(m for m in eval_section.metrics):
        problems.append(
            Problem(
                "eval.fraction",
                "is 0 and no [[data]] table has split = 'eval', so there "
                "is nothing to evaluate; set a fraction or set eval.metrics = []",
            )
        )
    if data and all(d.split == "eval" for d in data):
        problems.append(Problem("data", "every [[data]] table has split = 'eval': nothing to train on"))
    if problems:
        raise RecipeError(_scrub(problems, secrets), path=str(path) if path else None)
    assert template and model and trainer
    return Recipe(
        path=path,
        base_dir=base_dir,
        raw=raw,
        text=text,
        run=run,
        data=data,
        transforms=transforms,
        template=template,
        model=model,
        trainer=trainer,
        eval=eval_section,
        plugins=plugins,
        overrides=overrides or [],
        mixture=mixture,
        metric_configs=metric_configs,
    )


def _metric_configs(host: PluginHost, section: EvalSection, problems: list[Problem]) -> dict[str, ComponentConfig]:
    """Each metric of ``eval.metrics`` with its config: ``[eval.metric_options.NAME]`` validated by the metric's
    Config (problems at ``eval.metric_options.NAME.<key>``), or its defaults. Options for a metric that is not
    registered, or not in ``eval.metrics`` (they would never be used), are problems too."""
    registry = host.registry["metric"]
    for name in section.metric_options:
        key = f"eval.metric_options.{name}"
        if name not in registry:
            problems.append(host.unknown_problem(key, "metric", name))
        elif name not in section.metrics:
            problems.append(
                Problem(
                    key,
                    f"{name!r} is not in eval.metrics{did_you_mean(name, section.metrics)}, so "
                    "these options would not be used; add it to eval.metrics or remove the table",
                )
            )
    configs: dict[str, ComponentConfig] = {}
    for i, name in enumerate(section.metrics):
        registered = registry.get(name)
        if registered is None or name in configs:
            continue
        given = name in section.metric_options
        try:
            config = registered.cls.Config.model_validate(section.metric_options.get(name, {}), context={"host": host})
        except ValidationError as exc:
            problems.extend(_problems_from(exc, f"eval.metric_options.{name}", registered.cls.Config))
            continue
        set_origin(
            config,
            Origin(
                registered.plugin,
                registered.distribution,
                registered.version,
                "metric",
                name,
                f"eval.metric_options.{name}" if given else f"eval.metrics[{i}]",
            ),
        )
        configs[name] = config
    return configs


def _table(raw: dict[str, Any], key: str, problems: list[Problem]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.append(Problem(key, f"must be a table, got {type(value).__name__}"))
        return {}
    return dict(value)


def _default_source_name(table: dict[str, Any], index: int) -> str:
    for key in ("path", "dataset"):
        if isinstance(table.get(key), str):
            stem = Path(table[key]).stem or table[key]
            return re.sub(r"[^A-Za-z0-9._-]", "-", stem)
    return f"{table.get('source', 'data')}-{index}"
