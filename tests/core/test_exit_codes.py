"""The README's exit-code table is the truth: every code ift.errors defines is in it and nothing else; a recipe
that needs a plugin that failed to load exits with the plugin code; a hook function a plugin forgot to mark with
@ift.hookimpl is reported, not silently never called."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

import ift
from ift import errors
from ift.cli import main
from ift.host import PluginFailure, PluginHost

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_exit_codes() -> dict[int, str]:
    section = README.read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(\d+) *\| *(.+?) *\|$", section, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def defined_exit_codes() -> dict[str, int]:
    return {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}


def test_the_readme_table_lists_exactly_the_codes_ift_errors_defines() -> None:
    table, defined = readme_exit_codes(), defined_exit_codes()
    assert table, "no exit-code table under '## Exit codes' in README.md"
    assert sorted(table) == sorted(set(defined.values())), (sorted(table), defined)
    # every error class exits with a documented code
    for cls in [errors.IftError, *errors.IftError.__subclasses__()]:
        assert cls.exit_code in table, cls


def test_a_recipe_needing_a_plugin_that_failed_to_load_exits_with_the_plugin_code(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    (tmp_path / "r.toml").write_text('[[data]]\nsource = "sql"\nquery = "select 1"\n')
    broken = PluginFailure("sql", "ift-sql", "0.3.0", "ImportError: no module named sqlalchemy", "ift_sql:plugin")
    monkeypatch.setattr(PluginHost, "_load_entry_points", lambda self: self.failures.append(broken))
    assert main(["validate", str(tmp_path / "r.toml")]) == errors.EXIT_PLUGIN
    err = capsys.readouterr().err
    assert (
        "unknown source 'sql'" in err
        and "plugin 'sql' (ift-sql 0.3.0, entry point ift_sql:plugin) failed to load" in err
        and "sqlalchemy" in err
    )
    monkeypatch.setattr(PluginHost, "_load_entry_points", lambda self: None)
    assert main(["validate", str(tmp_path / "r.toml")]) == errors.EXIT_RECIPE  # no plugin failed: the recipe's fault


def _module(source: str) -> types.ModuleType:
    module = types.ModuleType("forgetful")
    exec(compile(source, "forgetful.py", "exec"), module.__dict__)
    return module


UNDECORATED = """
import ift

class Loud(ift.Transform):
    name = "loud"
    def apply(self, records, tally):
        return records

def ift_register_transforms():
    return [Loud]
"""


def test_a_hook_function_without_the_hookimpl_marker_is_an_error(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(
        ift.PluginError,
        match=r"plugin 'forgetful'.*ift_register_transforms is not marked with "
        r"@ift.hookimpl, so it would never be called",
    ):
        host.register(_module(UNDECORATED), "forgetful")
    assert "forgetful" not in host.plugins
    misspelled = UNDECORATED.replace("def ift_register_transforms", "def ift_register_transform")
    with pytest.raises(
        ift.PluginError,
        match=r"ift_register_transform is not marked with @ift.hookimpl.*did you "
        r"mean 'ift_register_transforms'",
    ):
        host.register(_module(misspelled), "forgetful")
    local = tmp_path / "forgetful.py"
    local.write_text(UNDECORATED)
    with pytest.raises(ift.PluginError, match="not marked with @ift.hookimpl"):
        host.load_local(local)
    decorated = _module(
        UNDECORATED.replace("def ift_register_transforms", "@ift.hookimpl\ndef ift_register_transforms")
    )
    host.register(decorated, "remembers")
    assert host.get("transform", "loud").plugin == "remembers"
