"""The data of a training run: its images, and the samples each process takes at each step.

The crops themselves are functions of ``(seed, sample number)`` (see
[`moopt_lic.data`][moopt_lic.data]); this module only numbers the samples, so a run's data do
not depend on how many processes share it, and a resumed run takes up the numbering where it
stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from moopt_lic.data import BUILTIN_EVAL_PHOTOS, BUILTIN_TRAIN_PHOTOS, ImageSet, builtin_photos
from moopt_lic.distributed import Processes
from moopt_lic.errors import InputError
from moopt_lic.objectives import MSSSIM_MIN_SIDE

if TYPE_CHECKING:
    from moopt_lic.config import TrainConfig

__all__ = ["StepBatches", "check_msssim_sizes", "training_and_validation_images"]


def training_and_validation_images(config: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """Return the images a run trains on and those it validates on.

    Parameters
    ----------
    config : TrainConfig
        Its ``dataset``, ``eval_dataset``, ``holdout`` and ``seed``: without ``dataset`` the
        built-in photos; without ``eval_dataset`` the built-in evaluation photo, or
        ``holdout`` images of ``dataset`` drawn by ``seed``.

    Returns
    -------
    tuple of ImageSet
        The training images and the validation images.

    Raises
    ------
    InputError
        For a missing or unreadable folder or image, or a holdout that leaves no image to
        train or to validate on.
    """
    if config.dataset is None:
        train_set = builtin_photos(BUILTIN_TRAIN_PHOTOS)
        if config.eval_dataset is None:
            return train_set, builtin_photos(BUILTIN_EVAL_PHOTOS)
        return train_set, ImageSet.from_folder(config.eval_dataset)
    images = ImageSet.from_folder(config.dataset)
    if config.eval_dataset is not None:
        return images, ImageSet.from_folder(config.eval_dataset)
    if config.holdout < 1 or len(images) <= config.holdout:
        raise InputError(
            f"--dataset {config.dataset!r} has {len(images)} image(s): holding out "
            f"--holdout {config.holdout} for validation leaves none to train on (or none to "
            f"validate on); pass --eval-dataset DIR or change --holdout"
        )
    return images.split(config.holdout, config.seed)


def check_msssim_sizes(images: ImageSet) -> None:
    """Refuse evaluation images too small for MS-SSIM's five scales (``--metric ms-ssim``).

    Raises
    ------
    InputError
        Naming the first image with a side of at most
        [`MSSSIM_MIN_SIDE`][moopt_lic.objectives.MSSSIM_MIN_SIDE] pixels.
    """
    for index in range(len(images)):
        height, width = images[index].shape[:2]
        if min(height, width) <= MSSSIM_MIN_SIDE:
            raise InputError(
                f"--metric ms-ssim: evaluation image {images.names[index]!r} is {width}×{height}; "
                f"MS-SSIM's five scales need both sides > {MSSSIM_MIN_SIDE} (pass another "
                f"--eval-dataset, or --holdout images that are large enough)"
            )


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """The sample numbers of this process for steps ``first … last − 1``, made lazily.

    Step ``s`` holds the global samples ``s·G … s·G + G − 1`` with ``G = N·B`` (N processes,
    B per process); process ``r`` takes ``s·G + r·B … s·G + r·B + B − 1``. One process with
    batch ``N·B`` sees exactly the samples of N processes with B.

    Parameters
    ----------
    first, last : int
        The steps to sample: ``first`` included, ``last`` excluded.
    size : int
        The batch size of one process (B).
    processes : Processes
        This process's rank and the number of processes (N).
    """

    def __init__(self, first: int, last: int, size: int, processes: Processes) -> None:
        self.first, self.last, self.size, self.processes = first, last, size, processes

    def __len__(self) -> int:
        return self.last - self.first

    def __iter__(self) -> Iterator[list[int]]:
        step_size = self.size * self.processes.world
        offset = self.processes.rank * self.size
        for step in range(self.first, self.last):
            start = step * step_size + offset
            yield list(range(start, start + self.size))
