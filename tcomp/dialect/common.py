"""Helpers shared by the dialect's reference implementations."""

from __future__ import annotations

import torch
from torch import Tensor

HALF = (torch.float16, torch.bfloat16)


def expand_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat key/value heads ``n_rep`` times along dim -3 (GQA/MQA to one head per query head)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=-3)


def work_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32: the precision references accumulate in."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
