"""Multi-process training on ``torch.distributed``: process identity and a few collectives.

The trainer needs these beyond those of
[`moopt.pytorch.balanced_backward`][moopt.pytorch.balanced_backward].

Under ``torchrun --nproc_per_node=N -m moopt_lic.train ...`` (``WORLD_SIZE`` > 1 in the
environment) every process joins one process group: gloo on the CPU, nccl on CUDA (one GPU
per process, by ``LOCAL_RANK``). Without torchrun nothing here is used: the single-process
path is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Processes", "agree", "broadcast", "setup", "teardown"]


@dataclass(frozen=True)
class Processes:
    """The place of a process in the job: rank, number of processes, local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1


def setup(device: torch.device, timeout_seconds: float) -> tuple[Processes, torch.device, bool]:
    """Join the process group when started by torchrun; return who we are and our device.

    ``device`` is the device asked for; on CUDA each process takes the GPU ``LOCAL_RANK``. A
    collective that waits longer than ``timeout_seconds`` (a rank that died or hangs) fails instead
    of hanging. The last value says whether this call created the group (and so should
    [`teardown`][moopt_lic.distributed.teardown] it); a group the caller made is used as it is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), device, False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_seconds),
        )
    return Processes(rank, world, local_rank), device, joined


def teardown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any, processes: Processes) -> Any:
    """Rank 0's ``value`` on every process (e.g. the output folder)."""
    if not processes.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def fingerprint(model: torch.nn.Module, balancer_state: dict[str, Any], step: int) -> str:
    """Return a digest of the parameters, the balancer state and the step."""
    digest = hashlib.sha256(f"{step}|{balancer_state!r}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def agree(value: str, processes: Processes) -> bool:
    """Whether every process holds the same ``value`` (a collective: all must call it)."""
    if not processes.distributed:
        return True
    values: list[Any] = [None] * processes.world
    dist.all_gather_object(values, value)
    return len(set(values)) == 1
