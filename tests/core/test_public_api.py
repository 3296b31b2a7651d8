"""The builtin plugins import only ift's public API, as a third-party plugin must: names in ``ift.__all__``, and
names in the ``__all__`` of the modules listed in ``ift.PUBLIC_MODULES``. The test lists every import that is not,
so a new private import is named where it happens."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import ift

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = ROOT / "builtin_plugins"
PLUGINS = ROOT / "plugins"


def ift_imports(folder: Path) -> list[tuple[str, int, str, str]]:
    """``(file under folder, line, module, name)`` of every absolute import from ``ift`` or one of its modules, outside
    ``ift.builtin_plugins`` (a builtin module may import its siblings)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and node.module
                and (node.module == "ift" or node.module.startswith("ift."))
                and not node.module.startswith("ift.builtin_plugins")
            ):
                found += [(str(path.relative_to(folder)), node.lineno, node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [
                    (str(path.relative_to(folder)), node.lineno, a.name, "")
                    for a in node.names
                    if a.name.startswith("ift.") and not a.name.startswith("ift.builtin_plugins")
                ]
    return found


def private(imports: list[tuple[str, int, str, str]]) -> list[str]:
    bad = []
    for file, line, module, name in imports:
        if module == "ift":
            public = set(ift.__all__) | {m.removeprefix("ift.") for m in ift.PUBLIC_MODULES}
            ok = name in public
        else:
            ok = module in ift.PUBLIC_MODULES and bool(name) and name in importlib.import_module(module).__all__
        if not ok:
            bad.append(f"{file}:{line}: {module}{'.' + name if name else ''}")
    return bad


def test_builtin_plugins_import_only_the_public_api():
    imports = ift_imports(BUILTINS)
    assert len(imports) > 50  # the walk sees the builtins' imports
    assert private(imports) == []


def test_the_example_plugins_import_only_the_public_api():
    assert private([i for i in ift_imports(PLUGINS) if "/tests/" not in f"/{i[0]}"]) == []


def test_every_public_module_declares_its_api():
    for name in ift.PUBLIC_MODULES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported, f"{name} has no __all__"
        assert all(hasattr(module, n) for n in exported), name
        assert not any(n.startswith("_") for n in exported), name
    assert all(hasattr(ift, n) for n in ift.__all__)


def test_the_check_names_a_private_import(tmp_path: Path):
    (tmp_path / "plugin.py").write_text(
        "from ift.host import PluginHost\nfrom ift.templating import _budget\n"
        "import ift.pipeline\nfrom ift import Objective\n"
    )
    found = private(ift_imports(tmp_path))
    assert [f.split(": ", 1)[1] for f in found] == ["ift.host.PluginHost", "ift.templating._budget", "ift.pipeline"]


def test_importing_ift_stays_light():
    code = "import sys, ift; print(sorted(m for m in ('torch', 'transformers', 'ift.pipeline') if m in sys.modules))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
