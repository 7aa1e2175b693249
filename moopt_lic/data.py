"""Training photos: image folders, the built-in photos, and seeded random crops.

Every crop is a pure function of ``(seed, n)``, where ``n`` is the *global sample number*
(``step × batch_size + position in the batch``): sample ``n`` belongs to epoch ``n // num_images``,
whose image order is a permutation drawn from ``(seed, epoch)``, and its crop offset (and its
quantisation-noise seed, see [`per_sample_noise`][moopt_lic.noise.per_sample_noise]) are drawn
from ``(seed, n)``. So the data never depend on how samples are grouped into batches or processes,
and a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from moopt_lic.errors import InputError

__all__ = [
    "BUILTIN_EVAL_PHOTOS",
    "BUILTIN_TRAIN_PHOTOS",
    "IMAGE_SUFFIXES",
    "CropDataset",
    "ImageSet",
    "SampleDraw",
    "builtin_photos",
    "draw_sample",
    "find_images",
    "load_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

BUILTIN_TRAIN_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
)
"""Real photographs shipped inside the scikit-image wheel (no download needed)."""

BUILTIN_EVAL_PHOTOS = ("coffee.png",)
"""The held-out built-in photo of the default run's evaluation."""

CACHE_LIMIT_BYTES = 2 * 2**30
"""Decode every image at start-up (and keep it in memory) while they need at most this much."""


def find_images(folder: str | Path) -> list[Path]:
    """Return the PNG, JPEG and WebP files below ``folder`` (recursively), sorted.

    Raises
    ------
    InputError
        If the folder does not exist, is not a folder, or holds no PNG/JPEG/WebP file.
    """
    path = Path(folder)
    if not path.exists():
        raise InputError(f"dataset folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise InputError(f"dataset folder {str(path)!r} is not a folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"dataset folder {str(path)!r} holds no images (looked recursively for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    Raises
    ------
    InputError
        If the file cannot be read or decoded; the message names the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot read image {str(path)!r}: {error}") from None


def _image_bytes(path: Path) -> int:
    """Return the decoded RGB size of ``path`` from its header, checking it is an image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot read image {str(path)!r}: {error}") from None
    return width * height * 3


def builtin_photos(files: Sequence[str]) -> ImageSet:
    """Return the named photos of scikit-image's data folder (shipped in its wheel) as a set.

    Raises
    ------
    InputError
        If scikit-image is not installed or lacks one of the files.
    """
    try:
        import skimage.data
    except ImportError:  # pragma: no cover - scikit-image is in the lic extra
        raise InputError(
            "the built-in photos come from scikit-image: pip install 'moopt[lic]', "
            "or pass --dataset DIR"
        ) from None
    folder = Path(skimage.data.__file__).parent
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"scikit-image's data folder {str(folder)!r} lacks {', '.join(missing)}; "
            f"pass --dataset DIR"
        )
    return ImageSet([folder / name for name in files], [Path(name).stem for name in files])


class ImageSet:
    """An ordered set of RGB photos, from files or from memory.

    Files are checked when the set is made (a corrupt or unreadable file fails then, with its name);
    when their decoded size fits [`CACHE_LIMIT_BYTES`][moopt_lic.data.CACHE_LIMIT_BYTES] they are
    decoded once and kept in memory, otherwise decoded on every access.

    Parameters
    ----------
    images : sequence of path or numpy.ndarray
        Image files, or RGB ``uint8`` arrays of shape ``(H, W, 3)``.
    names : sequence of str, optional
        A name per image (default: the file path, or ``"image i"``).
    """

    def __init__(self, images: Sequence[str | Path | np.ndarray], names: Sequence[str] = ()):
        if not images:
            raise InputError("the image set is empty")
        self.names = list(names) or [
            str(image) if isinstance(image, str | Path) else f"image {i}"
            for i, image in enumerate(images)
        ]
        paths = [Path(image) for image in images if isinstance(image, str | Path)]
        cache = sum(_image_bytes(p) for p in paths) <= CACHE_LIMIT_BYTES
        self._items: list[Path | np.ndarray] = [
            load_image(image) if isinstance(image, str | Path) and cache else image
            for image in images
        ]
        for name, item in zip(self.names, self._items, strict=True):
            if isinstance(item, np.ndarray) and (item.ndim != 3 or item.shape[2] != 3):
                raise InputError(f"image {name!r} must be RGB (H, W, 3), got {item.shape}")

    @classmethod
    def from_folder(cls, folder: str | Path) -> ImageSet:
        """All PNG/JPEG/WebP files below ``folder``, sorted by path."""
        return cls(find_images(folder))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> np.ndarray:
        item = self._items[index]
        return load_image(item) if isinstance(item, Path) else item

    def size(self, index: int) -> tuple[int, int]:
        """Return ``(height, width)`` of image ``index`` (from the file header if not cached)."""
        item = self._items[index]
        if isinstance(item, np.ndarray):
            return int(item.shape[0]), int(item.shape[1])
        with Image.open(item) as image:
            width, height = image.size
        return height, width

    def split(self, holdout: int, seed: int) -> tuple[ImageSet, ImageSet]:
        """Split off ``holdout`` images chosen by ``seed``: returns ``(rest, held_out)``."""
        order = np.random.default_rng([seed, 7]).permutation(len(self))
        held = sorted(int(i) for i in order[:holdout])
        rest = [i for i in range(len(self)) if i not in held]
        return self._subset(rest), self._subset(held)

    def _subset(self, indices: list[int]) -> ImageSet:
        subset = object.__new__(ImageSet)
        subset.names = [self.names[i] for i in indices]
        subset._items = [self._items[i] for i in indices]
        return subset


@dataclass(frozen=True)
class SampleDraw:
    """Where global sample ``n`` comes from: an image, a crop offset and a noise seed."""

    image_index: int
    top: int
    left: int
    noise_seed: int


def draw_sample(
    seed: int, n: int, num_images: int, sizes: Sequence[tuple[int, int]], patch: int
) -> SampleDraw:
    """Draw global sample ``n`` of a run seeded with ``seed`` (see the module documentation).

    ``sizes`` are the images' ``(height, width)``; the offset is drawn within the image
    padded up to ``patch`` where it is smaller.
    """
    epoch, position = divmod(n, num_images)
    order = np.random.default_rng([seed, 1, epoch]).permutation(num_images)
    image_index = int(order[position])
    rng = np.random.default_rng([seed, 2, n])
    height, width = sizes[image_index]
    top = int(rng.integers(max(height, patch) - patch + 1))
    left = int(rng.integers(max(width, patch) - patch + 1))
    return SampleDraw(image_index, top, left, int(rng.integers(2**62)))


def pad_to_patch(image: np.ndarray, patch: int) -> np.ndarray:
    """Mirror-pad an image smaller than ``patch`` on its bottom/right edge up to ``patch``."""
    height, width = image.shape[:2]
    if height >= patch and width >= patch:
        return image
    pads = ((0, max(patch - height, 0)), (0, max(patch - width, 0)), (0, 0))
    return np.pad(image, pads, mode="symmetric")


class CropDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Random ``patch × patch`` crops; item ``n`` is global sample ``n`` of the run.

    ``dataset[n]`` returns ``(crop, noise_seed)``: a float32 ``(3, patch, patch)`` tensor in [0, 1]
    and the sample's quantisation-noise seed. The dataset is indexed by the global sample number, so
    it has no natural length; [`epoch_size`][moopt_lic.data.CropDataset.epoch_size] is the number of
    images.
    """

    def __init__(self, images: ImageSet, patch: int, seed: int) -> None:
        self.images = images
        self.patch = patch
        self.seed = seed
        self.sizes = [images.size(i) for i in range(len(images))]

    @property
    def epoch_size(self) -> int:
        """Samples in one epoch: one crop of every image."""
        return len(self.images)

    def __len__(self) -> int:  # the samples of one epoch; indices beyond it are valid too
        return self.epoch_size

    def draw(self, n: int) -> SampleDraw:
        """Where sample ``n`` comes from."""
        return draw_sample(self.seed, n, len(self.images), self.sizes, self.patch)

    def __getitem__(self, n: int) -> tuple[torch.Tensor, int]:
        draw = self.draw(n)
        image = pad_to_patch(self.images[draw.image_index], self.patch)
        crop = image[draw.top : draw.top + self.patch, draw.left : draw.left + self.patch]
        tensor = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0
        return tensor, draw.noise_seed


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """Convert an RGB ``uint8`` ``(H, W, 3)`` array to a ``(1, 3, H, W)`` tensor in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
