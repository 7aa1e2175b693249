"""Where a run computes: the ``--device`` names, and deterministic CUDA kernels for resuming.

Both ``python -m moopt_lic.train`` and ``python -m moopt_lic.evaluate`` take ``--device``
(``auto``, ``cpu`` or ``cuda``); [`resolve_device`][moopt_lic.devices.resolve_device] turns it
into a ``torch.device``.
"""

from __future__ import annotations

import os

import torch

from moopt_lic.errors import InputError

__all__ = ["resolve_device", "use_deterministic_cuda"]


def resolve_device(name: str) -> torch.device:
    """Return the device that ``--device name`` asks for.

    Parameters
    ----------
    name : str
        ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, or any other name that
        ``torch.device`` accepts.

    Returns
    -------
    torch.device
        The device to compute on.

    Raises
    ------
    InputError
        For ``cuda`` on a machine without a CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def use_deterministic_cuda() -> None:
    """Ask CUDA for deterministic kernels at full float32 precision.

    Bit-identical resume is tested on the CPU; on CUDA this makes it possible (cuDNN's weight
    gradients are not deterministic by default; ops without a deterministic kernel warn
    instead of failing). TF32 is turned off as well: PyTorch lets cuDNN convolve in TF32 by
    default (10 mantissa bits), which would make a CUDA run less precise than the CPU runs
    it is compared with. The settings are global to the process.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
