"""One exception family for everything a user can cause.

The CLI turns an :class:`IftError` into one clear line and its documented exit code; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from ift.redact import redact

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "EXIT_BUG",
    "EXIT_DATA",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PLUGIN",
    "EXIT_PREEMPTED",
    "EXIT_RECIPE",
    "EXIT_RUN",
    "DataError",
    "IftError",
    "PluginError",
    "Preempted",
    "Problem",
    "RecipeError",
    "RunDirectoryInUse",
    "RunError",
]

# Exit codes, documented in the README. Click's own usage errors also exit with 2.
EXIT_OK = 0
EXIT_BUG = 1
EXIT_RECIPE = 2
EXIT_DATA = 3
EXIT_PLUGIN = 4
EXIT_RUN = 5
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; requeue with --resume
EXIT_INTERRUPTED = 130


class IftError(Exception):
    """Base class of every error caused by input (recipe, data, plugins) rather than by a bug."""

    exit_code = EXIT_RUN

    def __init__(self, message: str) -> None:
        message = redact(message)  # a credential in a URL or value never reaches error output
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One problem in a recipe: where (a dotted key path) and what."""

    key: str
    message: str
    #: the problem may well be a plugin's, not the recipe's: the recipe names a component that no loaded plugin
    #: provides while some plugin failed to load. A recipe error with such a problem exits with EXIT_PLUGIN.
    plugin_failed: bool = False

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class RecipeError(IftError):
    """The recipe is invalid. Carries every problem found, not only the first."""

    exit_code = EXIT_RECIPE

    def __init__(self, problems: list[Problem] | str, *, path: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = problems
        self.path = path
        if any(p.plugin_failed for p in problems):  # fix (or remove) the broken plugin first
            self.exit_code = EXIT_PLUGIN
        where = f"{path}: " if path else ""
        if len(problems) == 1:
            message = f"{where}invalid recipe: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"{where}invalid recipe, {len(problems)} problems:\n{lines}"
        super().__init__(message)


class DataError(IftError):
    """Instruction data cannot be read or is unusable; names the file and line where known."""

    exit_code = EXIT_DATA

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{message}")


class PluginError(IftError):
    """A plugin failed to load, registered a clashing name, or broke its contract."""

    exit_code = EXIT_PLUGIN

    def __init__(
        self, message: str, *, plugin: str | None = None, distribution: str | None = None, version: str | None = None
    ) -> None:
        self.plugin = plugin
        self.distribution = distribution
        self.version = version
        who = ""
        if plugin:
            who = f"plugin {plugin!r}"
            if distribution and version:
                who += f" ({distribution} {version})"
            elif distribution:
                who += f" (from {distribution})"
            who += ": "
        super().__init__(f"{who}{message}")


class RunError(IftError):
    """The run itself failed (model loading, training, evaluation, writing results)."""

    exit_code = EXIT_RUN


class RunDirectoryInUse(IftError):
    """Another process is running in (or resuming) the run directory; the message names it."""

    exit_code = EXIT_RECIPE


class Preempted(IftError):
    """The run was asked to stop (SIGTERM) and saved a checkpoint first."""

    exit_code = EXIT_PREEMPTED
