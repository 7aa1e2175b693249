"""Mixed precision: losses of 16 bits under autocast, and the overflow check of a float16 scaler.

A weight is never applied at the losses' 8 or 11 bits: the losses are worked with in
float32 or wider.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# The dtypes autocast may give; a weighted sum or a combination of them is formed in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def working_precision(tensor: torch.Tensor) -> torch.Tensor:
    """Return a loss as a 0-d tensor of float32 or wider (autocast may give 16-bit ones)."""
    scalar = tensor.reshape(())
    return scalar.float() if scalar.dtype in LOW_PRECISION else scalar


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every present tensor is finite (one transfer to the host)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all())
