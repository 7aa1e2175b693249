"""Checkpoint files that cannot run code: safe types, atomic writes, one-line refusals.

Every checkpoint `moopt_lic` reads (``python -m moopt_lic.evaluate``, ``--init-from``,
``--resume``, [`load_model`][moopt_lic.load_model]) is loaded with
``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler, which builds tensors,
numbers, strings, ``None`` and lists, tuples and dicts of them, and nothing else, so a
crafted file cannot make the load call a function. Everything a run saves is therefore kept
in those types (format 2): the balancer's NumPy arrays as lists of floats, NumPy's random
state as a tensor and numbers. Nothing is added to PyTorch's allow-list.

A file that holds anything else is refused with one line naming the file and the objects
it would have built. A checkpoint of format 1 (moopt_lic before format 2 pickled NumPy
arrays) is recognised by those arrays and gets the command that converts it:
``python -m moopt_lic.convert_checkpoint OLD NEW``, which loads NumPy arrays and nothing
else unless it is told the file is trusted (``--trust``).

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then
renamed over the old one (and the folder fsync'ed): a crash at any moment leaves either the
old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from moopt_lic.errors import InputError

__all__ = [
    "FORMAT",
    "atomic_save",
    "atomic_write_text",
    "capture_rng_state",
    "load_safely",
    "plain",
    "restore_rng_state",
    "unsafe_objects",
]

#: The checkpoint layout written today: only types ``torch.load(weights_only=True)`` builds.
FORMAT = 2

#: The objects a format-1 checkpoint pickled besides tensors: NumPy arrays, scalars, dtypes.
NUMPY_GLOBALS = re.compile(
    r"numpy\.(ndarray|dtype|dtypes\.\w+DType|(_core|core)\.multiarray\.(_reconstruct|scalar))"
)

CONVERT = "python -m moopt_lic.convert_checkpoint"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` so that ``path`` always holds a whole file."""
    _write_atomically(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that ``path`` always holds a whole file."""
    _write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def _write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Fill ``path`` through ``write``, atomically.

    ``write`` fills a temporary file beside ``path`` (named by this process, so two processes
    never share one), which is synced and renamed over ``path``, and the folder is synced: a
    crash leaves the old file or the new one, never a torn one.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
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


def unsafe_objects(path: str | Path) -> list[str] | None:
    """Return the globals (``module.name``) a checkpoint file would build, without loading it.

    None when the file is not in ``torch.save``'s zip format (the names cannot be listed).
    """
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip file, or a corrupt one: the load itself says what is wrong
        return None


def _torch_reason(error: Exception) -> str:
    """Return what a ``torch.load`` error says is wrong, in one line (its messages are long)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"loading it would build {found.group(1)}, which a safe load does not allow"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[index + 1] if index + 1 < len(lines) else line)
    return lines[0] if lines else type(error).__name__


def load_safely(path: str | Path) -> Any:
    """Return ``torch.load(path, weights_only=True)``, loaded on the CPU.

    Raises
    ------
    InputError
        Naming the file and what is wrong when it is missing, corrupt or not safe to load;
        a format-1 checkpoint (NumPy arrays inside) gets the command that converts it.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"checkpoint {str(file)!r} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = unsafe_objects(file)
        if refused and all(NUMPY_GLOBALS.fullmatch(name) for name in refused):
            raise InputError(
                f"checkpoint {str(file)!r} holds NumPy arrays: it was written by an earlier "
                f"moopt_lic (checkpoint format 1), whose files a safe load refuses; convert it "
                f"once with: {CONVERT} {str(file)!r} NEW.pt"
            ) from None
        if refused:
            raise InputError(
                f"checkpoint {str(file)!r} is refused: loading it would build "
                f"{', '.join(refused)}, and a checkpoint may hold only tensors and plain Python "
                f"values (it may run code; do not load it unless you made it)"
            ) from None
        raise InputError(
            f"cannot read checkpoint {str(file)!r}: it is not a file torch.save wrote, or not "
            f"one that loads safely ({_torch_reason(error)})"
        ) from None
    except Exception as error:  # torch raises many types for a corrupt file
        raise InputError(f"cannot read checkpoint {str(file)!r}: {_torch_reason(error)}") from None


def plain(value: Any) -> Any:
    """Return ``value`` with NumPy arrays and scalars as Python lists and numbers.

    Dicts, lists and tuples are converted inside; tensors and plain values pass through.
    Float64 arrays become lists of Python floats, which are the same doubles.
    """
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(item) for item in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def capture_rng_state() -> dict[str, Any]:
    """Every global random state (Python, NumPy, torch CPU and, when present, CUDA).

    Returned in safe types: NumPy's Mersenne Twister key as an int64 tensor.
    """
    name, key, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (legacy global)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of [`capture_rng_state`][moopt_lic.checkpoint.capture_rng_state].

    Raises
    ------
    ValueError
        If ``state`` does not have the layout ``capture_rng_state`` returns.
    """
    try:
        python = state["python"]
        numpy = state["numpy"]
        numpy_state = (
            str(numpy["bit_generator"]),
            np.asarray(numpy["key"], dtype=np.int64).astype(np.uint32),
            int(numpy["pos"]),
            int(numpy["has_gauss"]),
            float(numpy["cached_gaussian"]),
        )
        generator = state["torch"]
        if not isinstance(generator, torch.Tensor):
            raise TypeError(f"'torch' is a {type(generator).__name__}, not a tensor")
        random.setstate(_as_python_state(python))
        np.random.set_state(numpy_state)  # noqa: NPY002
        torch.set_rng_state(generator)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"the random state is malformed ({type(error).__name__}: {error})"
        ) from None
    if "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple[Any, ...]:
    """Python's ``random`` state (version, 625 ints, gauss) as ``random.setstate`` wants it."""
    version, internal, gauss = value
    return (int(version), tuple(int(v) for v in internal), gauss)
