"""TensorBoard scalars of a training run, written by the main process only."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

__all__ = ["ScalarWriter"]


class ScalarWriter:
    """TensorBoard scalars in ``folder``; a no-op unless ``enabled`` (the other processes).

    Parameters
    ----------
    folder : Path
        Where the event files go.
    step : int
        The step the run starts from: a resumed run drops the events logged after its
        checkpoint and logs them again.
    enabled : bool
        Whether this process writes.
    """

    def __init__(self, folder: Path, step: int, enabled: bool) -> None:
        purge = step + 1 if step else None
        self._writer = SummaryWriter(str(folder), purge_step=purge) if enabled else None

    def add_scalar(self, name: str, value: float, step: int) -> None:
        """Log ``value`` as ``name`` at ``step``."""
        if self._writer is not None:
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
