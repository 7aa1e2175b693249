"""moopt_lic.data: folders, early checks, and crops that are functions of (seed, sample)."""

import numpy as np
import pytest
import torch

from moopt_lic.data import CropDataset, ImageSet, draw_sample, find_images, pad_to_patch
from moopt_lic.errors import InputError


def test_find_images_recursive_and_sorted(tmp_path, test_images):
    (tmp_path / "a" / "b").mkdir(parents=True)
    source = sorted(test_images.glob("*.png"))
    (tmp_path / "a" / "b" / "x.PNG").write_bytes(source[0].read_bytes())
    (tmp_path / "y.png").write_bytes(source[1].read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in find_images(tmp_path)] == ["x.PNG", "y.png"]


def test_lossless_webp_folder_gives_the_same_pixels_as_png(tmp_path, test_images):
    """A lossless WebP copy of a PNG set loads to identical arrays, in the same order."""
    from PIL import Image

    for path in sorted(test_images.glob("*.png")):
        with Image.open(path) as image:
            image.convert("RGB").save(tmp_path / f"{path.stem}.webp", lossless=True, quality=100)
    png, webp = ImageSet.from_folder(test_images), ImageSet.from_folder(tmp_path)
    assert len(webp) == len(png) > 0
    for index in range(len(png)):
        np.testing.assert_array_equal(webp[index], png[index])


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_images(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(InputError, match="is not a folder"):
        find_images(tmp_path / "f.png")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no images"):
        find_images(tmp_path)


def test_corrupt_image_is_named_when_the_set_is_made(tmp_path, test_images):
    good = sorted(test_images.glob("*.png"))[0]
    (tmp_path / "good.png").write_bytes(good.read_bytes())
    (tmp_path / "broken.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match=r"cannot read image .*broken\.png"):
        ImageSet.from_folder(tmp_path)


def test_images_are_rgb_uint8(test_images):
    images = ImageSet.from_folder(test_images)
    assert len(images) == 4
    for i in range(len(images)):
        assert images[i].dtype == np.uint8 and images[i].shape[2] == 3


def test_split_is_seeded_and_disjoint(test_images):
    images = ImageSet.from_folder(test_images)
    rest, held = images.split(1, seed=3)
    again_rest, again_held = images.split(1, seed=3)
    assert held.names == again_held.names and rest.names == again_rest.names
    assert len(held) == 1 and len(rest) == 3 and not set(held.names) & set(rest.names)


def test_small_images_are_padded_not_rejected(test_images):
    """The 75×61 photo gives full 128×128 crops: mirror padding, the original in the corner."""
    images = ImageSet([sorted(test_images.glob("*odd*"))[0]])
    crop, _ = CropDataset(images, patch=128, seed=0)[0]
    assert crop.shape == (3, 128, 128)
    original = torch.from_numpy(images[0].copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(crop[:, :61, :75], original)
    padded = pad_to_patch(images[0], 128)
    assert padded.shape == (128, 128, 3)


def test_sample_depends_on_seed_and_number_only(test_images):
    """Sample n is the same crop whatever else is drawn, and differs across seeds."""
    dataset = CropDataset(ImageSet.from_folder(test_images), patch=32, seed=5)
    forward = [dataset[n] for n in range(10)]
    backward = [dataset[n] for n in reversed(range(10))][::-1]
    for (a, seed_a), (b, seed_b) in zip(forward, backward, strict=True):
        assert torch.equal(a, b) and seed_a == seed_b
    other = CropDataset(ImageSet.from_folder(test_images), patch=32, seed=6)
    assert any(not torch.equal(dataset[n][0], other[n][0]) for n in range(10))


def test_each_epoch_visits_every_image_once(test_images):
    sizes = [(64, 64)] * 7
    for epoch in range(3):
        seen = {draw_sample(1, epoch * 7 + p, 7, sizes, 32).image_index for p in range(7)}
        assert seen == set(range(7))


def test_crop_offsets_stay_inside(test_images):
    sizes = [(100, 80), (40, 200)]
    for n in range(200):
        draw = draw_sample(0, n, 2, sizes, 64)
        height, width = sizes[draw.image_index]
        assert 0 <= draw.top <= max(height, 64) - 64
        assert 0 <= draw.left <= max(width, 64) - 64
