"""TOML text for recipes given as dicts (see :mod:`ift.toml_writer`, which ``ift.load_recipe`` uses too)."""

from __future__ import annotations

from ift.toml_writer import dumps

__all__ = ["dumps"]
