"""CompressAI codecs by zoo name, built fresh (never with downloaded weights), and reloaded.

A [`ModelSpec`][moopt_lic.ModelSpec] (zoo name, quality, ``N``, ``M``) is all it takes to rebuild a
model; every checkpoint of `moopt_lic` stores it beside the weights, so
[`load_model`][moopt_lic.load_model] needs the checkpoint file alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
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
    "load_model",
    "main_and_aux_parameters",
    "model_from_checkpoint",
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


@dataclass(frozen=True)
class ModelSpec:
    """What a codec is: a zoo name, an optional quality (1–8) and ``N``/``M`` overrides.

    With a ``quality``, ``N`` and ``M`` default to CompressAI's zoo configuration for it
    (ELIC, not in the zoo, to its paper's 192/320). Without one they default to a small size
    that trains in minutes on a CPU (``N`` = 64, ``M`` = 96; ELIC ``M`` = 192): the size of
    the built-in demo. Cheng2020 models have no ``M``.
    """

    name: str
    quality: int | None = None
    N: int | None = None
    M: int | None = None

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise InputError(f"unknown model {self.name!r}; choose one of: {', '.join(MODELS)}")
        if self.quality is not None and not 1 <= self.quality <= 8:
            raise InputError(f"quality must be 1..8, got {self.quality}")
        for field in ("N", "M"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise InputError(f"--{field} must be a positive channel count, got {value}")
        arch = MODELS[self.name]
        if self.M is not None and not arch.takes_m:
            raise InputError(f"model {self.name!r} has no M (it takes --N only)")
        if self.M is not None and self.M < arch.min_m:
            raise InputError(
                f"model {self.name!r} needs --M ≥ {arch.min_m} (its latent channel groups are "
                f"16, 16, 32, 64 and M − 128), got {self.M}"
            )

    @property
    def downsampling(self) -> int:
        """Crops and padded images must be a multiple of this."""
        return MODELS[self.name].downsampling

    def channels(self) -> tuple[int, ...]:
        """Return the constructor's ``(N, M)`` (``(N,)`` for Cheng2020)."""
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
        """Inverse of [`to_dict`][moopt_lic.ModelSpec.to_dict], checked.

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


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """Build a freshly initialised codec (no pretrained weights are ever downloaded)."""
    return MODELS[spec.name].cls(*spec.channels())


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
        (``update(force=True)``), ready for ``compress``/``decompress``.

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
    """Rebuild the codec of an already read checkpoint; see [`load_model`][moopt_lic.load_model]."""
    spec = ModelSpec.from_dict(checkpoint["model_spec"])
    model = build_model(spec)
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
