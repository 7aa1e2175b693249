"""Data-parallel training: every call of the glue to ``torch.distributed``.

With one process (``world == 1``) the averages return their input untouched, so the
strategies call them unconditionally.
"""

from __future__ import annotations

import torch


def world_size(distributed: bool) -> int:
    """Return the number of processes to average over (1 when not distributed)."""
    if not distributed:
        return 1
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(
            "distributed=True needs torch.distributed to be initialised "
            "(torch.distributed.init_process_group, e.g. under torchrun)"
        )
    return int(torch.distributed.get_world_size())


def all_reduce_mean(tensors: list[torch.Tensor], world: int) -> list[torch.Tensor]:
    """Average ``tensors`` over the processes: one all-reduce per dtype, on a flat buffer."""
    if world == 1 or not tensors:
        return tensors
    reduced: list[torch.Tensor] = list(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[i].reshape(-1) for i in group])
        torch.distributed.all_reduce(flat)
        flat /= world
        sizes = [tensors[i].numel() for i in group]
        for i, part in zip(group, torch.split(flat, sizes), strict=True):
            reduced[i] = part.view_as(tensors[i])
    return reduced


def reduce_rows(
    grads: list[list[torch.Tensor | None]], world: int
) -> list[list[torch.Tensor | None]]:
    """Average every present gradient over the processes (all objectives in one call).

    Which gradients are present (reached) is the same on every process: the same model and
    losses give the same graph.
    """
    present = [(i, j) for i, row in enumerate(grads) for j, g in enumerate(row) if g is not None]
    means = all_reduce_mean([grads[i][j] for i, j in present], world)  # type: ignore[misc]
    reduced = [list(row) for row in grads]
    for (i, j), mean in zip(present, means, strict=True):
        reduced[i][j] = mean
    return reduced


def all_reduce_sum_(tensor: torch.Tensor) -> None:
    """Replace ``tensor``, in place, by its sum over the processes (more than one)."""
    torch.distributed.all_reduce(tensor)
