"""Every hook is documented, prefixed, and declared as a hookspec (a test fails when one is not)."""

from __future__ import annotations

import inspect

import pytest

from ift import hookspecs

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if name.startswith("ift_") and callable(obj))


def test_the_expected_hooks_exist() -> None:
    assert HOOKS == sorted(
        [
            "ift_register_sources",
            "ift_register_transforms",
            "ift_register_renderers",
            "ift_register_model_adapters",
            "ift_register_trainers",
            "ift_register_objectives",
            "ift_register_metrics",
            "ift_register_peft_methods",
            "ift_register_similarity_backends",
            "ift_register_commands",
            "ift_prepare_jinja_env",
            "ift_run_start",
            "ift_step_end",
            "ift_data_prepared",
            "ift_evaluate_end",
            "ift_run_end",
        ]
    )


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_docstring_and_is_a_hookspec(name: str) -> None:
    hook = getattr(hookspecs, name)
    doc = inspect.getdoc(hook)
    assert doc and len(doc.split()) >= 5, f"hook {name} has no real docstring"
    assert hasattr(hook, "ift_spec"), f"{name} is not marked with @hookspec"


def test_hook_api_version_is_an_int() -> None:
    assert isinstance(hookspecs.HOOK_API_VERSION, int) and hookspecs.HOOK_API_VERSION >= 1
