"""One call's inputs, checked and prepared once for whichever strategy runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from moopt.balancers.base import Balancer
from moopt.pytorch._checks import check_gram_mode, checked_losses, checked_params, loss_values
from moopt.pytorch._collectives import world_size
from moopt.pytorch._precision import LossScaling, scale_losses, working_precision
from moopt.pytorch._types import GramMode, LossesLike
from moopt.validation import FloatArray


@dataclass(frozen=True)
class PreparedStep:
    """What every strategy works on.

    Attributes
    ----------
    names : tuple of str
        The objectives' names, for messages and the returned `BalancedStep`.
    values : numpy.ndarray
        The k loss values the balancer sees: float64, averaged over the processes, never
        scaled.
    losses : list of torch.Tensor
        The k losses to back-propagate: 0-d, float32 or wider, scaled under a scaler.
    params : list of torch.Tensor
        The parameters whose ``.grad`` to fill, each once.
    balancer : moopt.Balancer
        The balancer that turns the values (and the Gram) into weights.
    gram_mode : {"sequential", "batched"}
        How the per-objective gradients are computed.
    retain_graph : bool
        Whether the autograd graph must survive the call.
    world : int
        The number of processes to average over (1 when not distributed).
    scaling : LossScaling
        The float16 loss scaling, and the balancer state to restore on overflow.
    """

    names: tuple[str, ...]
    values: FloatArray
    losses: list[torch.Tensor]
    params: list[torch.Tensor]
    balancer: Balancer
    gram_mode: GramMode
    retain_graph: bool
    world: int
    scaling: LossScaling


def prepare_step(
    losses: LossesLike,
    balancer: Balancer,
    params: Iterable[torch.Tensor],
    gram_mode: GramMode,
    retain_graph: bool,
    distributed: bool,
    grad_scaler: torch.amp.GradScaler | None,
) -> PreparedStep:
    """Check the inputs, copy the loss values to the host, and scale the losses to differentiate."""
    names, tensors = checked_losses(losses)
    param_list = checked_params(params)
    check_gram_mode(gram_mode)
    world = world_size(distributed)
    values = loss_values(names, tensors, world)  # what the balancer sees: never scaled
    working = [working_precision(t) for t in tensors]
    scaled, scaling = scale_losses(working, grad_scaler, balancer)
    return PreparedStep(
        names=names,
        values=values,
        losses=scaled,
        params=param_list,
        balancer=balancer,
        gram_mode=gram_mode,
        retain_graph=retain_graph,
        world=world,
        scaling=scaling,
    )
