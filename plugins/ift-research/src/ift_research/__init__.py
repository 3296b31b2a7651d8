"""Third-party ift plugin for research methods (see README.md)."""
