"""Weights & Biases logging for ift: the ``wandb`` entry point of the ``ift`` plugin group."""
