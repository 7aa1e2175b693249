"""Rate and distortion of a CompressAI codec as [`moopt.Objective`][moopt.Objective] objects.

* rate ``R``: bits per pixel, ``Σ -log2(likelihoods) / (B·H·W)`` over every latent the model
  returns (``y``, ``z``, ...);
* distortion ``D``: ``λ·255²·MSE`` with pixels in [0, 1], or ``λ·(1 − MS-SSIM)``. λ is
  inside ``D`` and applied once: the weighted-sum loss is ``R + D``.

Each objective reads a [`CodecBatch`][moopt_lic.CodecBatch]: the input batch and the model's output
dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from pytorch_msssim import ms_ssim

from moopt import Objective
from moopt_lic.errors import InputError

__all__ = [
    "MSSSIM_MIN_SIDE",
    "CodecBatch",
    "Distortion",
    "Metric",
    "Rate",
    "mse_to_psnr",
    "rd_objectives",
]

Metric = Literal["mse", "ms-ssim"]
"""A distortion measure, what ``--metric`` accepts: ``λ·255²·MSE`` or ``λ·(1 − MS-SSIM)``."""

MSSSIM_MIN_SIDE = 160
"""pytorch_msssim's 5 scales with its 11-pixel window need images larger than this."""


@dataclass(frozen=True)
class CodecBatch:
    """One forward pass: the input ``x`` (B × 3 × H × W in [0, 1]) and the model's output."""

    x: torch.Tensor
    output: dict[str, Any]


class Rate(Objective[CodecBatch, torch.Tensor]):
    """Bits per pixel estimated from the likelihoods of every latent."""

    def __init__(self) -> None:
        super().__init__("rate")

    def __call__(self, batch: CodecBatch) -> torch.Tensor:
        """Return ``Σ_latents Σ -log2 p / (B·H·W)``."""
        num_pixels = batch.x.shape[0] * batch.x.shape[2] * batch.x.shape[3]
        total = sum(torch.log(lk).sum() for lk in batch.output["likelihoods"].values())
        return total / (-math.log(2) * num_pixels)  # type: ignore[no-any-return]


class Distortion(Objective[CodecBatch, torch.Tensor]):
    """``λ·255²·MSE`` (``metric="mse"``) or ``λ·(1 − MS-SSIM)`` (``metric="ms-ssim"``).

    Parameters
    ----------
    lmbda : float
        The rate–distortion trade-off λ > 0 (CompressAI's MSE grid: 0.0018 … 0.0483).
    metric : {"mse", "ms-ssim"}
        MS-SSIM uses pytorch_msssim's five scales, so crops must be larger than
        [`MSSSIM_MIN_SIDE`][moopt_lic.objectives.MSSSIM_MIN_SIDE] pixels (checked when the run is
        configured).
    """

    def __init__(self, lmbda: float, metric: Metric = "mse") -> None:
        super().__init__("distortion")
        if not (isinstance(lmbda, int | float) and math.isfinite(lmbda) and lmbda > 0):
            raise InputError(f"λ (--lambda) must be a finite number > 0, got {lmbda!r}")
        if metric not in get_args(Metric):
            raise InputError(f"unknown metric {metric!r}; choose 'mse' or 'ms-ssim'")
        self.lmbda = float(lmbda)
        self.metric = metric

    def __call__(self, batch: CodecBatch) -> torch.Tensor:
        """Return the λ-scaled distortion of ``x_hat`` against ``x``."""
        x_hat = batch.output["x_hat"]
        if self.metric == "mse":
            return self.lmbda * 255**2 * torch.mean((x_hat - batch.x) ** 2)
        similarity = ms_ssim(x_hat.clamp(0, 1), batch.x, data_range=1.0)
        return self.lmbda * (1 - similarity)


def rd_objectives(lmbda: float, metric: Metric = "mse") -> tuple[Rate, Distortion]:
    """Return the two objectives of R-D training, in the order the balancers see them."""
    return Rate(), Distortion(lmbda, metric)


def mse_to_psnr(mse: float) -> float:
    """PSNR in dB of an MSE on pixels in [0, 1]."""
    return float("inf") if mse <= 0 else -10 * math.log10(mse)
