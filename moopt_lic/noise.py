"""Quantisation noise drawn per sample from a seed, so training does not depend on batching.

CompressAI's entropy models add ``U(-½, ½)`` noise to the latents in training
(``EntropyModel.quantize(..., "noise")``), drawn from the global torch RNG for the whole batch at
once: the noise a sample gets then depends on its position in the batch and on how many processes
share the batch. Inside [`per_sample_noise`][moopt_lic.noise.per_sample_noise], the noise of sample
``b`` in the ``c``-th noise call of a forward pass is drawn from its own generator, seeded by
``(seeds[b], c)``. Two forward passes with the same seeds get the same noise (the coarse-to-fine
re-evaluation compares losses under identical noise), and a sample gets the same noise whatever
batch or process it is in.

Two layouts of the noised tensor are known: batch first (``GaussianConditional``, the
latent codecs' direct calls) and channel first with the batch folded into the last
dimension (``EntropyBottleneck``: ``C × 1 × (B·H·W)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel

__all__ = ["per_sample_noise"]

_GOLDEN = 0x9E3779B97F4A7C15


class _NoiseState:
    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self.calls = 0

    def uniform(self, shape: Sequence[int], like: torch.Tensor, sample: int) -> torch.Tensor:
        seed = (self.seeds[sample] + self.calls * _GOLDEN) % 2**63
        generator = torch.Generator(device=like.device).manual_seed(seed)
        noise = torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
        return noise.uniform_(-0.5, 0.5, generator=generator)

    def noise_like(self, module: Any, inputs: torch.Tensor) -> torch.Tensor:
        batch = len(self.seeds)
        if isinstance(module, EntropyBottleneck):  # C × 1 × (B·H·W), batch-major last dim
            channels, one, length = inputs.shape
            if length % batch:
                raise RuntimeError(f"cannot split {tuple(inputs.shape)} into {batch} samples")
            per = length // batch
            parts = [self.uniform((channels, one, per), inputs, b) for b in range(batch)]
            return torch.cat(parts, dim=2)
        if inputs.shape[0] != batch:
            raise RuntimeError(
                f"per-sample noise: a tensor of shape {tuple(inputs.shape)} does not have the "
                f"batch ({batch}) first; this model's entropy model is not supported"
            )
        return torch.stack([self.uniform(inputs.shape[1:], inputs, b) for b in range(batch)])


@contextlib.contextmanager
def per_sample_noise(seeds: Sequence[int]) -> Iterator[None]:
    """Within the block, CompressAI's training noise is drawn per sample from ``seeds``.

    Parameters
    ----------
    seeds : sequence of int
        One seed per sample of the batch, in batch order.
    """
    state = _NoiseState(seeds)
    original = EntropyModel.quantize

    def quantize(
        self: Any, inputs: torch.Tensor, mode: str, means: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mode != "noise":
            return original(self, inputs, mode, means)
        noise = state.noise_like(self, inputs)
        state.calls += 1
        return inputs + noise

    EntropyModel.quantize = quantize  # type: ignore[method-assign]
    try:
        yield
    finally:
        EntropyModel.quantize = original  # type: ignore[method-assign]
