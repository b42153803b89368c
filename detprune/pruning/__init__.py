"""Structured channel pruning over coupled groups (Torch-Pruning's dependency graph)."""

from detprune.pruning.flops import Cost, measure
from detprune.pruning.pruner import GroupRemoval, PruneResult, apply_removals, conv_channels, prune_model

__all__ = ["Cost", "GroupRemoval", "PruneResult", "apply_removals", "conv_channels", "measure", "prune_model"]
