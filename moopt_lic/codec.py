"""Real entropy coding of whole images: pad, ``compress``, ``decompress``, crop, measure.

[`code_image`][moopt_lic.codec.code_image] codes one image;
[`code_images`][moopt_lic.codec.code_images] codes a set of them and checks each decoded image
against the model's forward pass, and [`summarize`][moopt_lic.codec.summarize] averages the
rows. ``python -m moopt_lic.evaluate`` and the trainer's final evaluation both use them.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

from moopt_lic.data import ImageSet, image_to_tensor
from moopt_lic.objectives import MSSSIM_MIN_SIDE, mse_to_psnr

__all__ = [
    "MEANS",
    "CodedImage",
    "ImageResult",
    "code_image",
    "code_images",
    "crop_padding",
    "decode_mismatch",
    "deterministic_convolutions",
    "forward_padded",
    "pad_image",
    "summarize",
]


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


def forward_padded(model: torch.nn.Module, x: torch.Tensor, multiple: int) -> dict[str, Any]:
    """Run the model's forward pass on ``x`` padded as for coding.

    Returns the model's output with ``x_hat`` cropped back to the size of ``x`` and clamped
    to [0, 1]; the likelihoods are those of the padded image.
    """
    padded, padding = pad_image(x, multiple)
    output: dict[str, Any] = model(padded)
    output["x_hat"] = crop_padding(output["x_hat"], padding).clamp(0, 1)
    return output


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


@dataclass(frozen=True)
class ImageResult:
    """One image of a set, coded for real by one model."""

    image: str
    bpp: float
    psnr: float
    ms_ssim: float | None  # None for images too small for five MS-SSIM scales
    encoding_time: float
    decoding_time: float
    decode_mismatch: float  # max |decoded − forward reconstruction|, ∞ for NaN/∞ pixels


def decode_mismatch(decoded: torch.Tensor, forward: torch.Tensor) -> float:
    """Max |decoded − forward|; ∞ when either holds NaN or ∞ (a broken decode is a mismatch)."""
    if not (torch.isfinite(decoded).all() and torch.isfinite(forward).all()):
        return math.inf
    return float((decoded - forward).abs().max())


@torch.no_grad()
def code_images(
    model: torch.nn.Module, images: ImageSet, multiple: int, device: torch.device
) -> list[ImageResult]:
    """Code every image of ``images`` for real, in order, and check each decode.

    Parameters
    ----------
    model : torch.nn.Module
        The codec on ``device``, in eval mode, with its CDF tables built
        (``model.update(force=True)``).
    images : ImageSet
        The images; each row is named by its name in the set.
    multiple : int
        The model's downsampling factor, to which images are padded.
    device : torch.device
        Where to code.

    Returns
    -------
    list of ImageResult
        One row per image. Its ``decode_mismatch`` compares the decoded image with the
        model's forward reconstruction ([`forward_padded`][moopt_lic.codec.forward_padded]):
        a large one means the entropy coder and the model disagree (e.g. CDF tables out of
        date).
    """
    results = []
    for index in range(len(images)):
        x = image_to_tensor(images[index]).to(device)
        coded = code_image(model, x, multiple)
        forward = forward_padded(model, x, multiple)["x_hat"]
        results.append(
            ImageResult(
                image=images.names[index],
                bpp=coded.bpp,
                psnr=coded.psnr,
                ms_ssim=None if math.isnan(coded.ms_ssim) else coded.ms_ssim,
                encoding_time=coded.encoding_time,
                decoding_time=coded.decoding_time,
                decode_mismatch=decode_mismatch(coded.x_hat, forward),
            )
        )
    return results


MEANS = {
    "psnr-rgb": "psnr",
    "ms-ssim-rgb": "ms_ssim",
    "bpp": "bpp",
    "encoding_time": "encoding_time",
    "decoding_time": "decoding_time",
}
"""The means of CompressAI's ``eval_model`` JSON, from [`ImageResult`][moopt_lic.codec.ImageResult]
fields."""


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def summarize(rows: Sequence[ImageResult]) -> tuple[dict[str, float | None], ImageResult]:
    """Summarize one model's per-image results.

    Returns
    -------
    tuple
        The means over the images (keys of [`MEANS`][moopt_lic.codec.MEANS]; None where no image
        has the value) and the row whose decoded pixels differ most from the forward pass (the
        decode check's worst case).
    """
    means = {key: _mean([getattr(r, field) for r in rows]) for key, field in MEANS.items()}
    return means, max(rows, key=lambda r: r.decode_mismatch)
