"""The inputs of a step, checked: losses, their values on the host, params, features, mode.

Every message names the offending objective or position, so that a wrong call fails here,
before any backward pass, with a message that says what to pass instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from moopt.pytorch._collectives import all_reduce_mean
from moopt.pytorch._types import GRAM_MODES, LossesLike, NonFiniteError
from moopt.validation import FloatArray


def unpack_losses(losses: LossesLike) -> tuple[tuple[str, ...], list[torch.Tensor]]:
    """Names and tensors of a sequence (``objective i``) or mapping of losses."""
    if isinstance(losses, Mapping):
        return tuple(str(name) for name in losses), list(losses.values())
    if isinstance(losses, torch.Tensor):
        raise TypeError(
            "losses must be a sequence or mapping of k scalar tensors, got one tensor; "
            "pass [loss_1, loss_2, ...] or {'name': loss, ...}"
        )
    tensors = list(losses)
    return tuple(f"objective {i}" for i in range(len(tensors))), tensors


def checked_losses(losses: LossesLike) -> tuple[tuple[str, ...], list[torch.Tensor]]:
    """Check the losses: non-empty, scalar tensors that require grad.

    Whether they are finite is checked on their values, by `loss_values`.
    """
    names, tensors = unpack_losses(losses)
    if not tensors:
        raise ValueError("losses is empty: give at least one objective")
    for name, loss in zip(names, tensors, strict=True):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss {name!r} must be a torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"loss {name!r} must be a scalar tensor, got shape {tuple(loss.shape)}; "
                f"reduce it first (e.g. .mean())"
            )
        if not loss.requires_grad:
            raise ValueError(
                f"loss {name!r} does not require grad: it is not connected to any parameter "
                f"(computed under torch.no_grad() or from detached tensors?)"
            )
    return names, tensors


def loss_values(names: tuple[str, ...], tensors: list[torch.Tensor], world: int = 1) -> FloatArray:
    """Copy the k loss values (averaged over the processes) to the host in one transfer.

    Any NaN/∞ objective is named.
    """
    stacked = torch.stack([t.detach().reshape(()) for t in tensors]).double()
    values = all_reduce_mean([stacked], world)[0].cpu().numpy()
    for name, value in zip(names, values, strict=True):
        if not math.isfinite(float(value)):
            raise NonFiniteError(f"loss {name!r} is {value}: the objective is not finite")
    return np.asarray(values, dtype=np.float64)


def checked_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Return the parameters as a list, each once, after checking they require grad."""
    if isinstance(params, torch.Tensor):
        params = [params]
    checked = list({id(p): p for p in params}.values())  # once each, in order
    if not checked:
        raise ValueError("params is empty: give the parameters whose .grad to fill")
    for index, param in enumerate(checked):
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"params[{index}] must be a torch.Tensor, got {type(param).__name__}")
        if not param.requires_grad:
            raise ValueError(f"params[{index}] (shape {tuple(param.shape)}) does not require grad")
    return checked


def checked_features(features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Return the features as a list, after checking each has an autograd history."""
    tensors = [features] if isinstance(features, torch.Tensor) else list(features)
    if not tensors:
        raise ValueError("features is empty: give the shared feature tensors, or None")
    for index, feature in enumerate(tensors):
        if not isinstance(feature, torch.Tensor):
            raise TypeError(
                f"features[{index}] must be a torch.Tensor, got {type(feature).__name__}"
            )
        if feature.grad_fn is None:
            raise ValueError(
                f"features[{index}] has no autograd history: pass the tensor the losses were "
                f"computed from (e.g. the latent y of the same forward pass), not a detached "
                f"copy or a leaf"
            )
    return tensors


def check_gram_mode(gram_mode: str) -> None:
    """Raise unless ``gram_mode`` is one of `GRAM_MODES`."""
    if gram_mode not in GRAM_MODES:
        raise ValueError(f"gram_mode must be one of {GRAM_MODES}, got {gram_mode!r}")
