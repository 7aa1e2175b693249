"""CompressAI codecs by zoo name or by factory, built fresh (never with downloaded weights).

A [`ModelSpec`][moopt_lic.ModelSpec] (zoo name or ``package.module:factory``, quality, ``N``,
``M``) is all it takes to rebuild a model; every checkpoint of `moopt_lic` stores it beside the
weights, so [`load_model`][moopt_lic.load_model] needs the checkpoint file alone.

Codecs of your own
------------------
``package.module:factory`` names a callable that returns a
``compressai.models.CompressionModel``; it is called with ``N=`` and ``M=`` when those are
given (and with no arguments otherwise). The module is imported by name from the Python path
(``importlib.import_module``), never from a file path, also when the name comes from a
checkpoint: a checkpoint can only name code that is already installed or on ``PYTHONPATH``,
and whoever rebuilds from it is told which factory is called, from which file. Modules of
Python's standard library are refused (they hold no codecs, and some of their callables act
when called).

The padding multiple (crop sizes, and the padding of whole images) of such a codec is the
model's ``downsampling_factor`` when it has one (CompressAI's own models declare it), checked
by one forward pass; otherwise it is found by a probe: the smallest power of two up to 256
for which images of that multiple (1 × 2 and 3 × 1 multiples, zeros, eval mode) come back at
their size.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    CompressionModel,
    Elic2022Chandelier,
    Elic2022Official,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.zoo.image import cfgs

from moopt_lic.checkpoint import FORMAT, load_safely
from moopt_lic.errors import InputError

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "factory_name",
    "import_factory",
    "load_model",
    "main_and_aux_parameters",
    "model_from_checkpoint",
    "padding_multiple",
]


@dataclass(frozen=True)
class _Architecture:
    cls: type[torch.nn.Module]
    downsampling: int  # the crop and padding multiple: total stride of g_a and h_a
    takes_m: bool = True  # Cheng2020 has N only
    default_nm: tuple[int, int] = (192, 320)  # where CompressAI's zoo has no per-quality cfg
    min_m: int = 1  # ELIC splits M into channel groups 16, 16, 32, 64 and M − 128
    demo_nm: tuple[int, int] = (64, 96)  # the small size used when no quality is given


MODELS: dict[str, _Architecture] = {
    "bmshj2018-factorized": _Architecture(FactorizedPrior, 16),
    "bmshj2018-hyperprior": _Architecture(ScaleHyperprior, 64),
    "mbt2018-mean": _Architecture(MeanScaleHyperprior, 64),
    "mbt2018": _Architecture(JointAutoregressiveHierarchicalPriors, 64),
    "cheng2020-anchor": _Architecture(Cheng2020Anchor, 64, takes_m=False),
    "cheng2020-attn": _Architecture(Cheng2020Attention, 64, takes_m=False),
    "elic2022-official": _Architecture(Elic2022Official, 64, min_m=129, demo_nm=(64, 192)),
    "elic2022-chandelier": _Architecture(Elic2022Chandelier, 64, min_m=129, demo_nm=(64, 192)),
}
"""Zoo names understood by ``--model``."""

FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
"""The form of a codec of your own: ``package.module:factory`` (dotted names, one colon)."""

#: The largest padding multiple the probe tries (a power of two).
MAX_PROBED_MULTIPLE = 256


def import_factory(name: str) -> Callable[..., Any]:
    """Import the callable ``package.module:factory`` from the Python path.

    Raises
    ------
    InputError
        If ``name`` is not of that form, names a standard-library module, the module cannot
        be imported, or it has no such callable.
    """
    where = f"codec factory {name!r}"
    if not FACTORY.fullmatch(name):
        raise InputError(
            f"{where} is not package.module:factory; name a module on the Python path (e.g. "
            f"mycodecs.tiny:build), not a file: put the file's folder on PYTHONPATH"
        )
    module_name, _, attribute = name.partition(":")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise InputError(f"{where}: {module_name!r} is a module of Python's standard library")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise InputError(
                f"{where}: cannot import {module_name!r}: no module {error.name!r} on the "
                f"Python path (install it, or add its folder to PYTHONPATH)"
            ) from None
        raise InputError(f"{where}: importing {module_name!r} failed: {error}") from None
    except Exception as error:
        raise InputError(
            f"{where}: importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise InputError(
                f"{where}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                f"{attribute!r}"
            )
    if not callable(factory):
        raise InputError(f"{where}: {attribute!r} is a {type(factory).__name__}, not callable")
    return factory  # type: ignore[no-any-return]


def factory_name(factory: Callable[..., Any]) -> str:
    """Return the ``package.module:factory`` name under which ``factory`` imports.

    Raises
    ------
    InputError
        If the callable cannot be imported back by that name (defined in ``__main__``, a
        lambda, a nested function, a ``functools.partial``, ...): a checkpoint must be able
        to name it.
    """
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    name = f"{module}:{qualname}"
    if not module or not qualname or module == "__main__" or not FACTORY.fullmatch(name):
        raise InputError(
            f"the codec factory {factory!r} has no importable name, so a checkpoint could not "
            f"name it: define it at the top level of a module on the Python path (not in "
            f"__main__, not a lambda or a nested function), or pass 'package.module:factory'"
        )
    if import_factory(name) is not factory:
        raise InputError(f"the codec factory {factory!r} is not what {name!r} imports")
    return name


def _round_trips(model: torch.nn.Module, multiple: int) -> bool:
    """Whether images of sides ``multiple × (1, 2)`` and ``(3, 1)`` come back at their size."""
    training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        with torch.no_grad():
            for height, width in ((multiple, 2 * multiple), (3 * multiple, multiple)):
                output = model(torch.zeros(1, 3, height, width, device=device))
                x_hat = output.get("x_hat") if isinstance(output, dict) else None
                if not isinstance(x_hat, torch.Tensor) or x_hat.shape != (1, 3, height, width):
                    return False
    except Exception:  # a shape mismatch inside the model: not a valid multiple
        return False
    finally:
        model.train(training)
    return True


def padding_multiple(model: torch.nn.Module, name: str) -> int:
    """Return the multiple that crops and padded images of ``model`` need (see module docs).

    Raises
    ------
    InputError
        If the model's ``downsampling_factor`` is not a positive integer or does not fit, or
        no power of two up to ``MAX_PROBED_MULTIPLE`` fits.
    """
    declared = getattr(model, "downsampling_factor", None)
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
            raise InputError(
                f"codec factory {name!r}: its model's downsampling_factor is {declared!r}, not "
                f"a positive integer"
            )
        if not _round_trips(model, declared):
            raise InputError(
                f"codec factory {name!r}: its model's downsampling_factor {declared} does not "
                f"fit: an image of {declared}×{2 * declared} pixels does not come back at its size"
            )
        return declared
    multiple = 1
    while multiple <= MAX_PROBED_MULTIPLE:
        if _round_trips(model, multiple):
            return multiple
        multiple *= 2
    raise InputError(
        f"codec factory {name!r}: no power of two up to {MAX_PROBED_MULTIPLE} is a size its "
        f"model returns images at; give the model an integer attribute downsampling_factor"
    )


_MULTIPLES: dict[ModelSpec, int] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What a codec is: a zoo name or a factory, an optional quality (1–8), ``N``/``M``.

    With a ``quality``, ``N`` and ``M`` default to CompressAI's zoo configuration for it
    (ELIC, not in the zoo, to its paper's 192/320). Without one they default to a small size
    that trains in minutes on a CPU (``N`` = 64, ``M`` = 96; ELIC ``M`` = 192): the size of
    the built-in demo. Cheng2020 models have no ``M``.

    ``name`` may also be ``"package.module:factory"``, or the factory itself (a callable
    returning a ``compressai.models.CompressionModel``, stored by its importable name): a
    codec of your own, called with the ``N``/``M`` given and no ``quality`` (see
    [`moopt_lic.models`][moopt_lic.models] for how it is imported and its padding found).
    """

    name: str
    quality: int | None = None
    N: int | None = None
    M: int | None = None

    def __post_init__(self) -> None:
        if callable(self.name) and not isinstance(self.name, str):
            object.__setattr__(self, "name", factory_name(self.name))
        for field in ("N", "M"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise InputError(f"--{field} must be a positive channel count, got {value}")
        if self.is_factory:
            if not FACTORY.fullmatch(self.name):
                import_factory(self.name)  # raises, saying what the form is
            if self.quality is not None:
                raise InputError(
                    f"--quality picks a CompressAI zoo size; the codec factory {self.name!r} "
                    f"takes --N and --M only"
                )
            return
        if self.name not in MODELS:
            raise InputError(
                f"unknown model {self.name!r}; choose one of: {', '.join(MODELS)}, or name a "
                f"codec of your own as package.module:factory"
            )
        if self.quality is not None and not 1 <= self.quality <= 8:
            raise InputError(f"quality must be 1..8, got {self.quality}")
        arch = MODELS[self.name]
        if self.M is not None and not arch.takes_m:
            raise InputError(f"model {self.name!r} has no M (it takes --N only)")
        if self.M is not None and self.M < arch.min_m:
            raise InputError(
                f"model {self.name!r} needs --M ≥ {arch.min_m} (its latent channel groups are "
                f"16, 16, 32, 64 and M − 128), got {self.M}"
            )

    @property
    def is_factory(self) -> bool:
        """Whether ``name`` is a codec of your own, ``package.module:factory``."""
        return ":" in self.name

    @property
    def downsampling(self) -> int:
        """Crops and padded images must be a multiple of this.

        For a factory, found from a model it builds (once per process; see
        [`padding_multiple`][moopt_lic.models.padding_multiple]).
        """
        if not self.is_factory:
            return MODELS[self.name].downsampling
        if self not in _MULTIPLES:
            _MULTIPLES[self] = padding_multiple(build_model(self), self.name)
        return _MULTIPLES[self]

    def factory_arguments(self) -> dict[str, int]:
        """Return the keywords a factory is called with: ``N`` and ``M`` where given."""
        return {key: getattr(self, key) for key in ("N", "M") if getattr(self, key) is not None}

    def channels(self) -> tuple[int, ...]:
        """Return the zoo constructor's ``(N, M)`` (``(N,)`` for Cheng2020)."""
        if self.is_factory:
            return tuple(self.factory_arguments().values())
        arch = MODELS[self.name]
        if self.quality is None:
            defaults: tuple[int, ...] = arch.demo_nm
        else:
            zoo = cfgs.get(self.name, {}).get(self.quality)
            defaults = tuple(zoo) if zoo else arch.default_nm
        n = self.N if self.N is not None else defaults[0]
        if not arch.takes_m:
            return (n,)
        return (n, self.M if self.M is not None else defaults[1])

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> ModelSpec:
        """Inverse of [`to_dict`][moopt_lic.models.ModelSpec.to_dict], checked.

        Raises
        ------
        InputError
            If ``values`` is not a dict of the known keys with values of their types, or
            names no valid codec.
        """
        if not isinstance(values, dict):
            raise InputError(f"model_spec is a {type(values).__name__}, not a dict")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in set(values) - set(known))
        if unknown:
            raise InputError(
                f"model_spec has unknown key(s) {', '.join(map(repr, unknown))} "
                f"(allowed: {', '.join(known)})"
            )
        if not isinstance(values.get("name"), str):
            raise InputError(f"model_spec 'name' must be a string, got {values.get('name')!r}")
        for key in ("quality", "N", "M"):
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"model_spec {key!r} must be an integer or None, got {value!r}")
        return cls(**values)


def build_model(spec: ModelSpec, *, announce: bool = False) -> torch.nn.Module:
    """Build a freshly initialised codec (no pretrained weights are ever downloaded).

    Parameters
    ----------
    spec : ModelSpec
        The codec.
    announce : bool, default False
        For a factory, say on stderr which one is called and from which file (done when the
        name comes from a checkpoint).

    Raises
    ------
    InputError
        For a factory that cannot be imported, raises, or returns something other than a
        ``compressai.models.CompressionModel``.
    """
    if not spec.is_factory:
        return MODELS[spec.name].cls(*spec.channels())
    factory = import_factory(spec.name)
    arguments = spec.factory_arguments()
    call = f"{spec.name}({', '.join(f'{k}={v}' for k, v in arguments.items())})"
    if announce:
        module = sys.modules[spec.name.partition(":")[0]]
        print(
            f"moopt_lic: building the codec with {call}, imported from "
            f"{getattr(module, '__file__', None) or module.__name__}",
            file=sys.stderr,
        )
    try:
        model = factory(**arguments)
    except Exception as error:
        raise InputError(
            f"codec factory {spec.name!r}: {call} raised {type(error).__name__}: {error}"
        ) from None
    if not isinstance(model, CompressionModel):
        raise InputError(
            f"codec factory {spec.name!r}: {call} returned a {type(model).__name__}, not a "
            f"compressai.models.CompressionModel (training and coding need its entropy "
            f"models, aux_loss, compress and decompress)"
        )
    return model


def main_and_aux_parameters(
    model: torch.nn.Module,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Split the parameters: the entropy bottlenecks' ``quantiles`` belong to ``aux_loss``.

    The first list is what rate and distortion train (and the balancer balances); the second
    is trained by the auxiliary optimizer only.
    """
    main, aux = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (aux if name.endswith(".quantiles") else main).append(param)
    return main, aux


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained codec from a `moopt_lic` checkpoint file alone.

    Parameters
    ----------
    path : str or Path
        A ``checkpoint.pt`` or ``checkpoint_best.pt`` written by ``moopt_lic.train``.
    device : str or torch.device, default "cpu"
        Where to put the model.

    Returns
    -------
    torch.nn.Module
        The model in eval mode, with its entropy coders' CDF tables built
        (``update(force=True)``), ready for ``compress``/``decompress``. A codec of your own
        is built by its factory, imported by name from the Python path (stderr says which).

    Raises
    ------
    InputError
        If the file is missing, unsafe, malformed or not a moopt_lic checkpoint, or its
        codec cannot be rebuilt (one line naming the file and what is wrong).
    """
    try:
        return model_from_checkpoint(read_checkpoint(path), device)
    except InputError as error:
        if str(path) in str(error):
            raise
        raise InputError(f"checkpoint {str(path)!r}: {error}") from None


def model_from_checkpoint(
    checkpoint: dict[str, Any], device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild the codec of an already read checkpoint; see [`load_model`][moopt_lic.load_model].

    A codec of your own is rebuilt by importing its factory from the Python path; which
    factory is called, from which file, is said on stderr.
    """
    spec = ModelSpec.from_dict(checkpoint["model_spec"])
    model = build_model(spec, announce=True)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise InputError(f"its weights do not fit {spec}: {first}") from None
    model.to(device).eval()
    model.update(force=True)  # type: ignore[operator]
    return model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, safely, and check its common entries.

    The load builds tensors and plain Python values only (see
    [`moopt_lic.checkpoint`][moopt_lic.checkpoint]).

    Raises
    ------
    InputError
        One line naming the file and what is wrong: missing, corrupt, holding anything but
        tensors and plain values (a format-1 checkpoint gets the command that converts it),
        not a moopt_lic checkpoint, or malformed (``model`` not a dict of tensors, a
        ``model_spec`` with unknown keys, ...).
    """
    file = Path(path)
    checkpoint = load_safely(file)
    if (
        not isinstance(checkpoint, dict)
        or "model" not in checkpoint
        or "model_spec" not in checkpoint
    ):
        raise InputError(
            f"{str(file)!r} is not a moopt_lic checkpoint (it needs 'model' and 'model_spec')"
        )
    problem = _malformed(checkpoint)
    if problem:
        raise InputError(f"checkpoint {str(file)!r} is malformed: {problem}")
    return checkpoint


def _malformed(checkpoint: dict[str, Any]) -> str | None:
    """Return what is wrong with a checkpoint's common entries, or None."""
    version = checkpoint.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        return f"'format' is {version!r}, not an integer"
    if version > FORMAT:
        return f"it has format {version}, newer than this moopt_lic's {FORMAT} (upgrade moopt)"
    weights = checkpoint["model"]
    if not isinstance(weights, dict):
        return f"'model' is a {type(weights).__name__}, not a state dict"
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            return f"'model' entry {name!r} is a {type(value).__name__}, not a tensor"
    step = checkpoint.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' is {step!r}, not a step number"
    try:
        ModelSpec.from_dict(checkpoint["model_spec"])
    except InputError as error:
        return str(error)
    return None
