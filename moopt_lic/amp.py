"""Mixed precision of the trainer (``--amp``): transforms in 16 bits, entropy models in 32.

Inside [`autocast`][moopt_lic.amp.autocast] the model's forward pass runs under
``torch.autocast`` with bfloat16 or float16, except CompressAI's entropy models
(``EntropyBottleneck``, ``GaussianConditional``, every ``EntropyModel``): their inputs are
cast to float32 and they run with autocast off. A likelihood is a difference of two nearby
CDF values, which 16-bit arithmetic rounds; the entropy models are a small part of the
compute, so they keep float32 and the rate's error is only that of the latents the
transforms produce. Measured on the demo codec (mean-scale hyperprior, N 64, M 96, CPU
bfloat16): with the entropy models under autocast too, the bits of the hyperlatent ``z``
(whose input is unchanged) moved by 0.02 bit per element on average; kept in float32, by
none. The analysis and synthesis transforms and the hyperprior's networks (the convolutions,
almost all of the compute) run in 16 bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch
from compressai.entropy_models import EntropyModel

__all__ = ["AMP_MODES", "AmpMode", "autocast", "dtype_of"]

AmpMode = Literal["off", "bf16", "fp16"]
"""A mixed-precision mode, what ``--amp`` accepts: off, bfloat16 or float16."""

#: The ``AmpMode`` values, in the order ``--help`` lists them.
AMP_MODES: tuple[AmpMode, ...] = get_args(AmpMode)

_DTYPES: dict[AmpMode, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def dtype_of(mode: AmpMode) -> torch.dtype | None:
    """Return the autocast dtype of an ``--amp`` mode (None for ``off``)."""
    return _DTYPES.get(mode)


def _float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    return value


@contextlib.contextmanager
def autocast(device_type: str, mode: AmpMode) -> Iterator[None]:
    """Within the block, autocast to ``mode``'s dtype; entropy models stay in float32.

    Parameters
    ----------
    device_type : str
        ``"cpu"`` or ``"cuda"``.
    mode : {"off", "bf16", "fp16"}
        ``off`` does nothing.
    """
    dtype = dtype_of(mode)
    if dtype is None:
        yield
        return
    patched = "__call__" in EntropyModel.__dict__
    original = EntropyModel.__call__

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple(_float32(a) for a in args)
        kwargs = {key: _float32(value) for key, value in kwargs.items()}
        with torch.autocast(device_type, enabled=False):
            return original(self, *args, **kwargs)

    EntropyModel.__call__ = call  # type: ignore[method-assign]
    try:
        with torch.autocast(device_type, dtype=dtype):
            yield
    finally:
        if patched:
            EntropyModel.__call__ = original  # type: ignore[method-assign]
        else:
            del EntropyModel.__call__
