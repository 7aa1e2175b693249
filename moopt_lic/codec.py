"""Real entropy coding of whole images: pad, ``compress``, ``decompress``, crop, measure.

Images are padded to a multiple of the model's downsampling factor exactly as CompressAI's
``compressai.utils.eval_model`` does (zeros, split evenly between the sides) and the decoded
image is cropped back. The rate is ``8 × bytes / pixels`` of the real bitstream; PSNR and
MS-SSIM are computed on the RGB image in [0, 1] (the decoded image clamped to [0, 1]), as
CompressAI reports them.

On CUDA, coding runs with cuDNN's deterministic kernels: the decoder recomputes the
hyperprior's scales and means that the encoder used, and a kernel that rounds differently
the second time picks other CDFs, so the bitstream decodes to garbage (seen on an H200:
latents of 1e9 and NaN images for a few of 24 photos, none with deterministic kernels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

from moopt_lic.objectives import MSSSIM_MIN_SIDE, mse_to_psnr

__all__ = ["CodedImage", "code_image", "crop_padding", "deterministic_convolutions", "pad_image"]


@dataclass(frozen=True)
class CodedImage:
    """The result of coding one image for real."""

    bpp: float
    psnr: float
    ms_ssim: float  # NaN for images too small for five MS-SSIM scales
    num_bytes: int
    encoding_time: float
    decoding_time: float
    x_hat: torch.Tensor  # the decoded image, 1 × 3 × H × W, cropped back, clamped to [0, 1]


def pad_image(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad ``x`` (N × C × H × W) to a multiple of ``multiple``, evenly on both sides.

    Returns the padded tensor and the ``(left, right, top, bottom)`` padding.
    """
    height, width = x.shape[-2:]
    new_h = (height + multiple - 1) // multiple * multiple
    new_w = (width + multiple - 1) // multiple * multiple
    left, top = (new_w - width) // 2, (new_h - height) // 2
    padding = (left, new_w - width - left, top, new_h - height - top)
    return F.pad(x, padding, mode="constant", value=0), padding


def crop_padding(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo [`pad_image`][moopt_lic.codec.pad_image]."""
    left, right, top, bottom = padding
    height, width = x.shape[-2:]
    return x[..., top : height - bottom, left : width - right]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def deterministic_convolutions(device: torch.device) -> Iterator[None]:
    """On CUDA, use cuDNN's deterministic kernels inside the block (restored after it)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


@torch.no_grad()
def code_image(model: torch.nn.Module, x: torch.Tensor, multiple: int) -> CodedImage:
    """Compress and decompress ``x`` (1 × 3 × H × W in [0, 1]) with ``model`` for real.

    The model must be in eval mode with its CDF tables built (``model.update(force=True)``).
    """
    device = x.device
    padded, padding = pad_image(x, multiple)
    with deterministic_convolutions(device):
        _synchronize(device)
        start = time.perf_counter()
        encoded = model.compress(padded)  # type: ignore[operator]
        _synchronize(device)
        encoding_time = time.perf_counter() - start
        start = time.perf_counter()
        decoded = model.decompress(encoded["strings"], encoded["shape"])  # type: ignore[operator]
        _synchronize(device)
        decoding_time = time.perf_counter() - start
    x_hat = crop_padding(decoded["x_hat"], padding).clamp(0, 1)
    num_bytes = sum(len(s) for strings in encoded["strings"] for s in strings)
    pixels = x.shape[-2] * x.shape[-1]
    mse = torch.mean((x_hat - x) ** 2).item()
    similarity = math.nan
    if min(x.shape[-2:]) > MSSSIM_MIN_SIDE:
        similarity = ms_ssim(x_hat, x, data_range=1.0).item()
    return CodedImage(
        bpp=8.0 * num_bytes / pixels,
        psnr=mse_to_psnr(mse),
        ms_ssim=similarity,
        num_bytes=num_bytes,
        encoding_time=encoding_time,
        decoding_time=decoding_time,
        x_hat=x_hat,
    )
