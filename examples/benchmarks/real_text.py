"""Real instruction text for the real-model benchmark, made offline from the Python standard library's own
documentation: ``python examples/benchmarks/real_text.py OUT.jsonl [--rows N]``.

Each row is a prompt/completion pair whose completion is real English prose written by people: the docstring
of a public function, class or module of the standard library (text under the PSF License, a permissive
licence; it ships with every Python). Prompts are short task statements in the style of instruction data
("Explain what ``json.dumps(obj, *, skipkeys=False, ...)`` does."). Lengths are as they come: most answers
are a few dozen to a few hundred tokens, a few are long (module overviews), so batches are not filled to
``max_length``. The set depends only on the Python version (printed with the rows) and ``--seed``: the same
interpreter gives the same file.

Nothing here imports ift, torch or TRL.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

# Pure-Python modules with substantial docstrings (a fixed list, in this order, so the rows do not depend on
# what else is installed).
MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email.message",
    "email.utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "http.client",
    "http.cookies",
    "http.server",
    "imaplib",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mimetypes",
    "multiprocessing",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "profile",
    "pstats",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "trace",
    "traceback",
    "tracemalloc",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zipimport",
)

FUNCTION_PROMPTS = (
    "Explain what `{name}{signature}` does in Python.",
    "Write the documentation for the Python function `{name}{signature}`.",
    "What does `{name}` do? Describe its arguments and what it returns.",
    "Describe the behaviour of `{name}{signature}` from Python's `{module}` module.",
)
CLASS_PROMPTS = (
    "Explain what the Python class `{name}` is for.",
    "Write the docstring of the class `{name}` in Python's `{module}` module.",
    "Describe `{name}`: what it represents and how it is used.",
)
MODULE_PROMPTS = (
    "Give an overview of the Python standard library module `{name}`.",
    "What is the `{name}` module in Python for? Summarize what it provides.",
)
MIN_WORDS = 12  # docstrings shorter than this are one-line stubs, not prose


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    if len(text) <= 80:
        return text
    cut = text.rfind(", ", 0, 76)  # whole parameters only
    return text[:cut] + ", ...)" if cut > 0 else "(...)"


def _documented(module_name: str) -> Iterator[tuple[str, str, str, str]]:
    """(kind, qualified name, signature, docstring) for the module and its public functions, classes and
    the classes' public methods, in a stable order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return
    doc = inspect.getdoc(module)
    if doc:
        yield "module", module_name, "", doc
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield "function", f"{module_name}.{name}", _signature(obj), inspect.getdoc(obj) or ""
        elif inspect.isclass(obj):
            yield "class", f"{module_name}.{name}", "", inspect.getdoc(obj) or ""
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                yield "function", f"{module_name}.{name}.{attr}", _signature(member), inspect.getdoc(member) or ""


def make_rows(n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Up to ``n`` rows (all of them when None), shuffled with ``seed``."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for module_name in MODULES:
        for kind, name, signature, doc in _documented(module_name):
            if len(doc.split()) < MIN_WORDS or doc in seen:
                continue
            seen.add(doc)  # an inherited or aliased docstring once
            prompts = {"module": MODULE_PROMPTS, "class": CLASS_PROMPTS, "function": FUNCTION_PROMPTS}[kind]
            prompt = rng.choice(prompts).format(name=name, signature=signature, module=module_name)
            rows.append({"prompt": prompt + "\n", "completion": doc})
    rng.shuffle(rows)
    return rows if n is None else rows[:n]


def describe(rows: list[dict[str, str]]) -> str:
    words = sorted(len((r["prompt"] + r["completion"]).split()) for r in rows)
    if not words:
        return "no rows"
    return (
        f"{len(rows)} rows from the Python {platform.python_version()} standard library's docstrings; words per "
        f"row: median {words[len(words) // 2]}, 90th percentile {words[int(len(words) * 0.9)]}, "
        f"max {words[-1]}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--rows", type=int, default=None, help="at most this many rows (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = make_rows(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(describe(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
