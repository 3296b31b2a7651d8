"""``ift serve``: an OpenAI-compatible HTTP server for a run's tuned model (see :mod:`ift.builtin_plugins.serve`)."""
