"""Example third-party ift plugin (see README.md)."""
