"""Hydra launcher plugin of this repository: every multirun job in its own ``python -m`` process."""
