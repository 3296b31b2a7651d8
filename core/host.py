"""The plugin host: discovers plugins, collects the components they register, and calls lifecycle hooks.

Order: builtin plugins, then the ``ift`` entry-point group (one at a time, so one broken package cannot
hide the others), then recipe-local plugin files. Core code calls hooks only through this class.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import pluggy

from ift import hookspecs
from ift.builtin_plugins import MODULES
from ift.components import KINDS, Component
from ift.config import ComponentConfig, TrainerConfig
from ift.errors import PluginError, Problem
from ift.hookcalls import AttributedHooks, HookImplFailed
from ift.peft import PeftMethodConfig
from ift.runtime import package_version

if TYPE_CHECKING:
    from ift.objectives import Objective

ENTRY_POINT_GROUP = "ift"
BUILTIN_MODULES = MODULES  # the builtin plugin modules, loaded first (listed with the builtin plugins)
_REGISTER_HOOKS = {
    "source": "ift_register_sources",
    "transform": "ift_register_transforms",
    "renderer": "ift_register_renderers",
    "model_adapter": "ift_register_model_adapters",
    "trainer": "ift_register_trainers",
    "objective": "ift_register_objectives",
    "metric": "ift_register_metrics",
    "similarity_backend": "ift_register_similarity_backends",
    "peft_method": "ift_register_peft_methods",
}
KIND_LABELS = {
    "source": "source",
    "transform": "transform",
    "renderer": "template renderer",
    "model_adapter": "model adapter",
    "trainer": "trainer",
    "objective": "training objective",
    "metric": "metric",
    "similarity_backend": "similarity backend",
    "peft_method": "PEFT method",
}


@dataclass
class PluginInfo:
    """A loaded plugin: its name in the host, where it came from, and what it registered."""

    name: str
    distribution: str
    version: str
    origin: str  # "builtin", "entry-point" or "local"
    registered: dict[str, list[str]] = field(default_factory=dict)
    #: sha256 of a local plugin's file: its code can change while its "version" (``local``) stays the same
    fingerprint: str = ""

    @property
    def provenance(self) -> str:
        """Distribution and version (and a local file's hash): what identifies the plugin's code."""
        return " ".join(p for p in (self.distribution, self.version, self.fingerprint) if p)


@dataclass
class PluginFailure:
    """A plugin that could not be loaded or whose registration hook failed."""

    name: str
    distribution: str
    version: str
    error: str
    entry_point: str = ""


@dataclass(frozen=True)
class Registered:
    """A component class and the plugin that provides it."""

    cls: type[Component]
    plugin: str
    distribution: str
    version: str


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class PluginHost:
    """Owns one pluggy PluginManager. Build it in ``main()`` or a test, never at import time."""

    def __init__(self, *, entry_points: bool = True, local_plugins: Iterable[Path] = ()) -> None:
        self.pm = pluggy.PluginManager("ift")
        self.pm.add_hookspecs(hookspecs)
        self.hooks = AttributedHooks(self.pm)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._registry: dict[str, dict[str, Registered]] | None = None
        version = package_version("ift")
        for module_name in BUILTIN_MODULES:
            module = importlib.import_module(module_name)
            self._register(module, module_name.rsplit(".", 1)[-1], "ift", version, "builtin")
        if entry_points and os.environ.get("IFT_DISABLE_ENTRY_POINTS", "") not in ("1", "true"):
            self._load_entry_points()
        for path in local_plugins:
            self.load_local(path)

    # --- loading -------------------------------------------------------------------------------

    def _register(self, plugin: object, name: str, dist: str, version: str, origin: str) -> None:
        if name in self.plugins:
            other = self.plugins[name]
            raise PluginError(
                f"a plugin named {name!r} is already loaded from {other.distribution}", plugin=name, distribution=dist
            )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"invalid hook implementation: {exc}", plugin=name, distribution=dist) from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(self._explain_validation(plugin), plugin=name, distribution=dist) from exc
        unmarked = self._unmarked_hooks(plugin)
        if unmarked:
            self.pm.unregister(name=name)
            raise PluginError("; ".join(unmarked), plugin=name, distribution=dist)
        self.plugins[name] = PluginInfo(name, dist, version, origin)
        self._registry = None

    def _explain_validation(self, plugin: object) -> str:
        known = [n for n in dir(hookspecs) if n.startswith("ift_")]
        bad = [n for n in dir(plugin) if n.startswith("ift_") and n not in known and callable(getattr(plugin, n))]
        return "; ".join(f"unknown hook {n!r}{did_you_mean(n, known)}" for n in bad) or "invalid hook"

    def _unmarked_hooks(self, plugin: object) -> list[str]:
        """Functions named like hooks (``ift_*``) that lack the ``@ift.hookimpl`` marker: pluggy skips them, so
        the plugin would silently never run them."""
        known = [n for n in dir(hookspecs) if n.startswith("ift_")]
        out = []
        for attr in dir(plugin):
            value = getattr(plugin, attr, None)
            if (
                attr.startswith("ift_")
                and inspect.isroutine(value)
                and self.pm.parse_hookimpl_opts(plugin, attr) is None
            ):
                hint = "" if attr in known else f" (not a hook name either{did_you_mean(attr, known) or ''})"
                out.append(f"{attr} is not marked with @ift.hookimpl, so it would never be called; decorate it{hint}")
        return out

    def _load_entry_points(self) -> None:
        # IFT_LOAD_PLUGINS: only these entry points; IFT_DISABLE_PLUGINS: all but these (IFT_PLUGINS: old name)
        allow = os.environ.get("IFT_LOAD_PLUGINS") or os.environ.get("IFT_PLUGINS")
        allowed = {a.strip() for a in allow.split(",")} if allow else None
        denied = {a.strip() for a in os.environ.get("IFT_DISABLE_PLUGINS", "").split(",") if a.strip()}
        seen: set[tuple[str, str]] = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "unknown distribution"
            version = ep.dist.version if ep.dist else "?"
            if (allowed is not None and ep.name not in allowed) or ep.name in denied or (dist, ep.name) in seen:
                continue  # the same distribution twice on sys.path: the first one wins, as for imports
            seen.add((dist, ep.name))
            try:
                plugin = ep.load()
                self._register(plugin, ep.name, dist, version, "entry-point")
            except Exception as exc:  # a broken plugin must not stop the others
                message = f"{type(exc).__name__}: {exc}"
                self.failures.append(PluginFailure(ep.name, dist, version, message, ep.value))
                warnings.warn(
                    f"plugin {ep.name!r} ({dist} {version}, entry point {ep.value}) failed to load: {message}",
                    stacklevel=2,
                )

    def load_local(self, path: Path) -> None:
        """Register a one-file plugin (a recipe's ``[plugins] local = [...]``)."""
        path = Path(path).resolve()
        name = f"local:{path.stem}"
        if not path.is_file():
            raise PluginError(f"local plugin file not found: {path}", plugin=name)
        spec = importlib.util.spec_from_file_location(f"ift_local_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module: ModuleType = importlib.util.module_from_spec(spec)
        try:
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginError(f"failed to import {path}: {type(exc).__name__}: {exc}", plugin=name) from exc
        self._register(module, name, str(path), "local", "local")
        self.plugins[name].fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def register(self, plugin: object, name: str, *, distribution: str = "test", version: str = "0") -> None:
        """Register an object or module implementing hooks (used by tests and embedding code)."""
        self._register(plugin, name, distribution, version, "runtime")

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._registry = None

    # --- registry ------------------------------------------------------------------------------

    @property
    def registry(self) -> dict[str, dict[str, Registered]]:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> dict[str, dict[str, Registered]]:
        registry: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        for info in self.plugins.values():
            info.registered = {}
        for kind, hook_name in _REGISTER_HOOKS.items():
            for plugin_name, classes in self._registered_by(hook_name):
                info = self._info(plugin_name)
                for cls in classes:
                    self._check_class(kind, cls, info)
                    name = cls.name
                    if name in registry[kind]:
                        other = registry[kind][name]
                        raise PluginError(
                            f"{KIND_LABELS[kind]} name {name!r} is registered twice: by plugin "
                            f"{other.plugin!r} ({other.distribution} {other.version}) and by plugin "
                            f"{info.name!r} ({info.distribution} {info.version})",
                            plugin=info.name,
                            distribution=info.distribution,
                        )
                    registry[kind][name] = Registered(cls, info.name, info.distribution, info.version)
                    info.registered.setdefault(kind, []).append(name)
        self._objective_trainers(registry)
        return registry

    def _objective_trainers(self, registry: dict[str, dict[str, Registered]]) -> None:
        """Each objective is also a trainer of its name, on the training loop."""
        from ift.sft import objective_trainer

        for name, objective in registry["objective"].items():
            info = self.plugins.get(objective.plugin) or PluginInfo(objective.plugin, "?", "?", "?")
            if name in registry["trainer"]:
                other = registry["trainer"][name]
                raise PluginError(
                    f"training objective {name!r} would also be a trainer of that name, but plugin "
                    f"{other.plugin!r} ({other.distribution} {other.version}) registers a trainer "
                    f"{name!r}",
                    plugin=objective.plugin,
                    distribution=objective.distribution,
                )
            try:
                trainer = objective_trainer(cast("type[Objective]", objective.cls))
            except ValueError as exc:
                raise PluginError(
                    f"ift_register_objectives: {exc}", plugin=objective.plugin, distribution=objective.distribution
                ) from None
            registry["trainer"][name] = Registered(trainer, objective.plugin, objective.distribution, objective.version)
            info.registered.setdefault("trainer", []).append(name)

    def _info(self, plugin_name: str) -> PluginInfo:
        return self.plugins.get(plugin_name) or PluginInfo(plugin_name, "?", "?", "?")

    def _registered_by(self, hook_name: str) -> list[tuple[str, list[Any]]]:
        """Call a registration hook through pluggy (wrappers may change the result) and pair each class in the
        result with the plugin that returned it: the one whose list it was in when that plugin returned it, else
        the first that returned it, else the wrapper that added it. In registration order (builtins first), the
        reverse of pluggy's call order."""
        try:
            lists, returned = self.hooks.call(hook_name)
        except HookImplFailed as failed:
            info = self._info(failed.plugin)
            exc = failed.error
            raise PluginError(
                f"{hook_name}() raised {type(exc).__name__}: {exc}", plugin=info.name, distribution=info.distribution
            ) from exc
        by_list = {id(r.value): r for r in returned if not r.wrapper}
        by_class: dict[Any, str] = {}
        for r in returned:
            for part in (r.snapshot,) if not r.wrapper else (r.value or ()):
                for cls in part or ():
                    by_class.setdefault(cls, r.plugin)
        out: list[tuple[str, list[Any]]] = []
        for classes in reversed(lists or []):
            if not classes:
                continue
            own = by_list.get(id(classes))
            groups: dict[str, list[Any]] = {}
            for cls in classes:
                owner = own.plugin if own is not None and cls in own.snapshot else by_class.get(cls, "?")
                groups.setdefault(owner, []).append(cls)
            out.extend(groups.items())
        return out

    @staticmethod
    def _check_class(kind: str, cls: Any, info: PluginInfo) -> None:
        base = KINDS[kind]
        problem = None
        config = getattr(cls, "Config", None)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            problem = f"returned {cls!r}, which is not a subclass of ift.{base.__name__}"
        elif not isinstance(getattr(cls, "name", None), str) or not getattr(cls, "name", None):
            problem = f"{cls.__name__} has no 'name'"
        elif not (isinstance(config, type) and issubclass(config, ComponentConfig)):
            problem = f"{cls.__name__}.Config must subclass ift.ComponentConfig"
        elif kind == "trainer" and not issubclass(config, TrainerConfig):
            problem = f"{cls.__name__}.Config must subclass ift.TrainerConfig"
        elif kind == "peft_method" and not issubclass(config, PeftMethodConfig):
            problem = f"{cls.__name__}.Config must subclass ift.PeftMethodConfig"
        if problem:
            raise PluginError(f"{_REGISTER_HOOKS[kind]}: {problem}", plugin=info.name, distribution=info.distribution)

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> Registered:
        """The class registered under ``name``; a clear error (with failed plugins) otherwise."""
        try:
            return self.registry[kind][name]
        except KeyError:
            raise PluginError(self.unknown_message(kind, name)) from None

    def unknown_problem(self, key: str, kind: str, name: str) -> Problem:
        """The recipe problem for an unknown component name at ``key``; marked as possibly a plugin's (exit code
        EXIT_PLUGIN) when some plugin failed to load."""
        return Problem(key, self.unknown_message(kind, name), plugin_failed=bool(self.failures))

    def unknown_message(self, kind: str, name: str) -> str:
        choices = self.names(kind)
        message = (
            f"unknown {KIND_LABELS[kind]} {name!r}{did_you_mean(name, choices)}; "
            f"available: {', '.join(choices) or 'none'}"
        )
        for failure in self.failures:
            message += (
                f"; plugin {failure.name!r} ({failure.distribution} {failure.version}, entry point "
                f"{failure.entry_point}) failed to load and may provide it: {failure.error}"
            )
        return message

    # --- typed facade over the remaining hooks -------------------------------------------------

    def register_commands(self, cli: Any) -> None:
        self._observe("ift_register_commands", "adding commands", cli=cli)

    def prepare_jinja_env(self, env: Any) -> None:
        self._observe("ift_prepare_jinja_env", "preparing the template environment", env=env)

    def _observe(self, hook_name: str, where: str, **kwargs: Any) -> None:
        """Call a hook through pluggy; a failure names the plugin, the hook and where (the original chained)."""
        try:
            self.hooks.call(hook_name, **kwargs)
        except HookImplFailed as failed:
            info, exc = self.plugins.get(failed.plugin), failed.error
            raise PluginError(
                f"{hook_name} ({where}) raised {type(exc).__name__}: {exc}",
                plugin=failed.plugin,
                distribution=info.distribution if info else None,
                version=info.version if info else None,
            ) from exc

    def data_prepared(self, run_dir: str, train_records: list[Any], eval_records: list[Any]) -> None:
        self._observe(
            "ift_data_prepared",
            "data prepared",
            run_dir=run_dir,
            train_records=train_records,
            eval_records=eval_records,
        )

    def run_start(self, run_dir: str, resolved: dict[str, Any]) -> None:
        self._observe("ift_run_start", "run start", run_dir=run_dir, resolved=resolved)

    def step_end(self, run_dir: str, event: dict[str, Any]) -> None:
        self._observe("ift_step_end", f"step {event.get('step')}", run_dir=run_dir, event=event)

    def evaluate_end(self, run_dir: str, stage: str, metrics: dict[str, Any]) -> None:
        self._observe("ift_evaluate_end", f"evaluation {stage}", run_dir=run_dir, stage=stage, metrics=metrics)

    def run_end(self, run_dir: str, status: str, metrics: dict[str, Any]) -> None:
        self._observe("ift_run_end", f"run end, {status}", run_dir=run_dir, status=status, metrics=metrics)

    def data_plugins(self, resolved: dict[str, Any], *, trainer: bool = False) -> dict[str, str]:
        """The plugins whose code shapes a recipe's prepared data, each with its :attr:`PluginInfo.provenance`
        (for the prepared-data cache key): those providing its sources (nested ones too: any ``source`` key
        inside a ``[[data]]`` or ``[[transforms]]`` table), similarity backends (``backend`` keys), transforms,
        template renderer and model adapter, and every plugin adding Jinja filters or globals. With ``trainer``
        the trainer's and the PEFT method's plugins too (for a resume's identity: what prepares the data and what
        trains on it)."""
        wanted: set[tuple[str, Any]] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for key, kind in (("source", "source"), ("backend", "similarity_backend")):
                    if isinstance(value.get(key), str):
                        wanted.add((kind, value[key]))
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        walk(resolved.get("data", []))
        walk(resolved.get("transforms", []))
        wanted.update(("transform", t.get("name")) for t in resolved.get("transforms", []))
        wanted.add(("renderer", (resolved.get("template") or {}).get("name")))
        wanted.add(("model_adapter", (resolved.get("model") or {}).get("adapter")))
        if trainer:
            wanted.add(("trainer", (resolved.get("trainer") or {}).get("name")))
            peft = (resolved.get("model") or {}).get("peft")
            if isinstance(peft, dict):
                wanted.add(("peft_method", peft.get("method")))
        names = {self.registry[kind][name].plugin for kind, name in wanted if name in self.registry.get(kind, {})}
        names |= {impl.plugin_name for impl in self.pm.hook.ift_prepare_jinja_env.get_hookimpls()}
        return {name: self.plugins[name].provenance if name in self.plugins else "?" for name in sorted(names)}

    def describe(self) -> list[dict[str, Any]]:
        """Loaded plugins for ``ift plugins`` and the manifest."""
        _ = self.registry
        return [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "origin": p.origin,
                "registered": p.registered,
                **({"sha256": p.fingerprint} if p.fingerprint else {}),
            }
            for p in self.plugins.values()
        ]
