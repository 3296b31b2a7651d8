"""Plugins shipped with ift. Each module registers through the same public hooks a third party uses."""
