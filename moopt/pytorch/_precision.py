"""Mixed precision: losses of 16 bits under autocast, and the loss scaling of a float16 scaler.

A weight is never applied at the losses' 8 or 11 bits: the losses are worked with in
float32 or wider. Under a ``GradScaler`` the scaled losses ``s·L_i`` are back-propagated,
the balancer sees the Gram divided by ``s²``, and a step whose gradients overflow is skipped
with the balancer restored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moopt.balancers.base import Balancer
from moopt.validation import FloatArray

# The dtypes autocast may give; a weighted sum or a combination of them is formed in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def working_precision(tensor: torch.Tensor) -> torch.Tensor:
    """Return a loss as a 0-d tensor of float32 or wider (autocast may give 16-bit ones)."""
    scalar = tensor.reshape(())
    return scalar.float() if scalar.dtype in LOW_PRECISION else scalar


def _all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every present tensor is finite (one transfer to the host)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


@dataclass(frozen=True)
class LossScaling:
    """What a float16 ``GradScaler`` changed in one step, and what to restore on overflow.

    Attributes
    ----------
    scaler : torch.amp.GradScaler or None
        None without a scaler, or with a disabled one: nothing is scaled or skipped.
    scale : float
        The factor s the losses were multiplied by (1 without a scaler).
    balancer_state : dict or None
        The balancer's state before the step, restored when the step is skipped.
    """

    scaler: torch.amp.GradScaler | None = None
    scale: float = 1.0
    balancer_state: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """Whether the losses were scaled (and an overflow skips the step)."""
        return self.scaler is not None

    def overflowed(self, grads: Iterable[torch.Tensor | None]) -> bool:
        """Whether, under a scaler, a gradient is inf/NaN: then the step is skipped."""
        return self.scaler is not None and not _all_finite(grads)

    def gram_overflowed(self, gram: FloatArray) -> bool:
        """Whether, under a scaler, the Gram is inf/NaN: then the step is skipped."""
        return self.scaler is not None and not np.isfinite(gram).all()


def scale_losses(
    losses: list[torch.Tensor], grad_scaler: torch.amp.GradScaler | None, balancer: Balancer
) -> tuple[list[torch.Tensor], LossScaling]:
    """Multiply the losses by an enabled scaler's scale; keep the balancer's state to restore."""
    if grad_scaler is None or not grad_scaler.is_enabled():
        return losses, LossScaling()
    scaled = [grad_scaler.scale(t) for t in losses]
    return scaled, LossScaling(grad_scaler, float(grad_scaler.get_scale()), balancer.state_dict())
