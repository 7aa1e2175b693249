"""``python -m moopt_lic.convert_checkpoint OLD NEW``: rewrite a format-1 checkpoint safely.

moopt_lic before checkpoint format 2 pickled NumPy arrays (the balancer's state, NumPy's
random state), which ``torch.load(..., weights_only=True)`` refuses. This command loads such
a file with PyTorch's restricted unpickler and NumPy's array, scalar and dtype objects
allowed, and nothing else; converts every NumPy value to plain Python (float64 arrays to
lists of the same doubles, NumPy's random state to a tensor and numbers); and writes NEW in
the current format, which every reader of `moopt_lic` loads safely. A resumed run continues
from NEW exactly as it would have from OLD.

A file that would build any other object is refused, naming those objects; only with
``--trust``, for a file you made yourself, is it unpickled in full (which can run code).

```bash
python -m moopt_lic.convert_checkpoint runs/a/checkpoint.pt runs/a/checkpoint.pt  # in place
python -m moopt_lic.convert_checkpoint old.pt new.pt --trust  # a file you made yourself
```
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moopt_lic.checkpoint import (
    FORMAT,
    NUMPY_GLOBALS,
    atomic_save,
    load_safely,
    plain,
    unsafe_objects,
)
from moopt_lic.errors import InputError
from moopt_lic.models import read_checkpoint

__all__ = ["convert_checkpoint", "main"]

#: What the NumPy objects of a format-1 file are called when their names cannot be listed.
_NUMPY_NAMES = (
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
)


def _resolve(name: str) -> Any:
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _numpy_objects(names: Sequence[str]) -> list[Any]:
    """Return the NumPy objects named (those ``NUMPY_GLOBALS`` matches), for the allow-list."""
    objects = []
    for name in names:
        if NUMPY_GLOBALS.fullmatch(name):
            try:
                objects.append(_resolve(name))
            except (ImportError, AttributeError):  # numpy 1 vs 2 module layout
                continue
    for dtype in (np.float64, np.float32, np.int64, np.int32, np.uint32, np.bool_):
        objects.append(type(np.dtype(dtype)))
    return objects


def _load(file: Path, trust: bool) -> Any:
    """Load OLD: the restricted unpickler with NumPy allowed, or (``trust``) in full."""
    names = unsafe_objects(file)
    others = [name for name in names or [] if not NUMPY_GLOBALS.fullmatch(name)]
    if others and not trust:
        raise InputError(
            f"{str(file)!r} is refused: loading it would build {', '.join(others)}, and a "
            f"moopt_lic checkpoint holds only tensors, plain values and NumPy arrays; if you "
            f"made this file yourself and trust it, pass --trust (unpickling it can run code)"
        )
    if trust:
        try:
            return torch.load(file, map_location="cpu", weights_only=False)
        except Exception as error:
            raise InputError(f"cannot read checkpoint {str(file)!r}: {error}") from None
    allowed = _numpy_objects(names if names is not None else _NUMPY_NAMES)
    with torch.serialization.safe_globals(allowed):
        try:
            return load_safely(file)
        except InputError as error:
            if names is None:  # not a zip file: its objects could not be listed beforehand
                raise InputError(f"{error}; pass --trust only if you made this file") from None
            raise


def _converted_rng(rng: Any) -> Any:
    """Format 1 kept NumPy's random state as ``np.random.get_state()``'s tuple."""
    if not isinstance(rng, dict) or not isinstance(rng.get("numpy"), list | tuple):
        return rng
    name, key, position, has_gauss, cached = rng["numpy"]
    numpy = {
        "bit_generator": str(name),
        "key": torch.tensor([int(v) for v in key], dtype=torch.int64),
        "pos": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return {**rng, "numpy": numpy}


_SAFE_LEAVES = (torch.Tensor, str, bytes, int, float, bool, type(None))


def _first_unsafe(value: Any, where: str) -> str | None:
    """Return where the first value a safe checkpoint cannot hold is, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_unsafe(key, f"{where} key") or _first_unsafe(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_unsafe(item, f"{where}[{index}]")
            if found:
                return found
        return None
    if isinstance(value, _SAFE_LEAVES) or isinstance(value, torch.dtype | torch.Size):
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


def convert_checkpoint(
    source: str | Path, destination: str | Path, *, trust: bool = False
) -> dict[str, Any]:
    """Convert a format-1 checkpoint (NumPy inside) to the current, safely loading format.

    Parameters
    ----------
    source : str or Path
        The old checkpoint.
    destination : str or Path
        Where to write the converted one (the same path converts in place; any other
        existing file is refused).
    trust : bool, default False
        Unpickle ``source`` in full even if it would build objects other than NumPy's
        (only for a file you made yourself: unpickling can run code).

    Returns
    -------
    dict
        The converted checkpoint, as [`read_checkpoint`][moopt_lic.models.read_checkpoint]
        reads it back from ``destination``.

    Raises
    ------
    InputError
        For a missing, unreadable or refused file, one that is not a moopt_lic checkpoint,
        or one holding values that have no safe form.
    """
    file, target = Path(source), Path(destination)
    if not file.is_file():
        raise InputError(f"checkpoint {str(file)!r} does not exist")
    if target.exists() and target.resolve() != file.resolve():
        raise InputError(
            f"{str(target)!r} exists; give a new path, or OLD's own path to convert in place"
        )
    state = _load(file, trust)
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise InputError(
            f"{str(file)!r} is not a moopt_lic checkpoint (it needs 'model' and 'model_spec')"
        )
    converted = plain(state)
    converted["rng"] = _converted_rng(converted.get("rng"))
    if "rng" not in state:
        del converted["rng"]
    converted["format"] = FORMAT
    problem = _first_unsafe(converted, "checkpoint")
    if problem:
        raise InputError(f"{str(file)!r} cannot be converted: {problem}, which has no safe form")
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # what is written loads safely
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(converted, target)
    return read_checkpoint(target)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m moopt_lic.convert_checkpoint``."""
    parser = argparse.ArgumentParser(
        prog="python -m moopt_lic.convert_checkpoint",
        description="Rewrite a checkpoint of an earlier moopt_lic (NumPy arrays inside) in the "
        "current format, which loads with torch.load(weights_only=True).",
    )
    parser.add_argument("old", help="the checkpoint to convert")
    parser.add_argument("new", help="where to write it (OLD's own path: in place)")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="unpickle OLD in full even if it holds objects other than NumPy arrays (only "
        "for a file you made yourself: unpickling can run code)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad input)."""
    args = build_parser().parse_args(argv)
    try:
        checkpoint = convert_checkpoint(args.old, args.new, trust=args.trust)
    except InputError as error:
        print(f"moopt_lic.convert_checkpoint: error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.new}: checkpoint format {checkpoint['format']}, step "
        f"{checkpoint.get('step', 0)}; it loads with torch.load(..., weights_only=True)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
