"""Shared machinery for training an edit: the per-edit batch, the fast site runner, the optimisation loop."""
