"""Plugins shipped with ift. Each module registers through the same public hooks a third party uses."""

#: The builtin plugin modules, in the order the plugin host loads them (before any entry point).
MODULES = (
    "ift.builtin_plugins.sources",
    "ift.builtin_plugins.transforms",
    "ift.builtin_plugins.cleaning",
    "ift.builtin_plugins.renderers",
    "ift.builtin_plugins.causal_lm",
    "ift.builtin_plugins.seq2seq",
    "ift.builtin_plugins.classifier",
    "ift.builtin_plugins.peft_methods",
    "ift.builtin_plugins.sft",
    "ift.builtin_plugins.trainers",
    "ift.builtin_plugins.preference",
    "ift.builtin_plugins.metrics",
    "ift.builtin_plugins.builders",
    "ift.builtin_plugins.data_cli",
    "ift.builtin_plugins.reporting",
    "ift.builtin_plugins.quality",
    "ift.builtin_plugins.tensorboard",
    "ift.builtin_plugins.serve",
    "ift.builtin_plugins.inference",
    "ift.builtin_plugins.scaffold",
)
