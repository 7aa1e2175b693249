"""Atomic checkpoint files and the random-number state a run needs to resume exactly.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then
renamed over the old one (and the folder fsync'ed): a crash at any moment leaves either the
old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_save", "capture_rng_state", "restore_rng_state"]


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` so that ``path`` always holds a whole file."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def capture_rng_state() -> dict[str, Any]:
    """Every global random state: Python, NumPy, torch CPU and (when present) CUDA."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global state)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of [`capture_rng_state`][moopt_lic.checkpoint.capture_rng_state]."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
