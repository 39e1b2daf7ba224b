"""Gathering per-rank Python objects and tensors (a no-op in a single process)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a CPU tensor over all ranks (ranks may hold different lengths)."""
    return torch.cat(gather_objects(tensor))
