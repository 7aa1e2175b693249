"""``python -m moopt_lic.evaluate``: code images for real with trained checkpoints.

For each checkpoint: rebuild the codec ([`moopt_lic.load_model`][moopt_lic.load_model], which runs
``update(force=True)``), ``compress`` and ``decompress`` every image of ``--dataset``
(padded as CompressAI does, cropped back), and report the rate from the bitstream's bytes,
PSNR and MS-SSIM on RGB (means of the per-image values) and the coding times, in the JSON
layout of ``compressai.utils.eval_model`` (one list entry per checkpoint, in the order
given), so ``compressai.utils.plot`` and ``python -m moopt_lic.compare`` read it.

Every decoded image is compared with the model's own reconstruction (its forward pass in
eval mode); a difference above ``--tolerance`` is reported, since it means the entropy coder
and the model disagree (e.g. CDF tables out of date).

    python -m moopt_lic.evaluate runs/a/checkpoint.pt runs/b/checkpoint.pt
        -d ../shared/data/eval -o results/ws.json --name "weighted sum"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from moopt_lic.codec import MEANS, ImageResult, code_images, summarize
from moopt_lic.codec import decode_mismatch as decode_mismatch  # importable from here too
from moopt_lic.data import ImageSet
from moopt_lic.devices import resolve_device
from moopt_lic.errors import InputError
from moopt_lic.models import ModelSpec, model_from_checkpoint, read_checkpoint

__all__ = ["ImageResult", "evaluate", "evaluate_checkpoint", "main", "summarize"]

DEFAULT_TOLERANCE = 1e-3
"""Largest accepted |decoded − forward reconstruction| per pixel (images in [0, 1])."""


def evaluate_checkpoint(
    path: str | Path, images: ImageSet, device: torch.device
) -> list[ImageResult]:
    """Code every image of ``images`` with the codec in checkpoint ``path``.

    Returns
    -------
    list of ImageResult
        A row per image, in order, as [`code_images`][moopt_lic.codec.code_images] makes them.

    Raises
    ------
    InputError
        For a missing or unreadable checkpoint, or weights that do not fit its model.
    """
    checkpoint = read_checkpoint(path)  # read once: the model and its padding multiple
    try:
        model = model_from_checkpoint(checkpoint, device)
        multiple = ModelSpec.from_dict(checkpoint["model_spec"]).downsampling
    except InputError as error:
        raise InputError(f"checkpoint {str(path)!r}: {error}") from None
    return code_images(model, images, multiple, device)


def evaluate(
    checkpoints: Sequence[str | Path],
    dataset: str | Path,
    *,
    device: str = "cpu",
    name: str = "moopt_lic",
    per_image: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Evaluate ``checkpoints`` on the images of ``dataset``; CompressAI's JSON layout.

    Returns
    -------
    dict
        ``{"name", "description", "results": {"psnr-rgb", "ms-ssim-rgb", "bpp",
        "encoding_time", "decoding_time"}, "checkpoints", "decode_check"}``, each result a
        list with one entry per checkpoint (the mean over the images); with ``per_image``
        also ``"per_image"``. ``ms-ssim-rgb`` averages the images larger than 160 pixels
        (null if there are none).

    Raises
    ------
    InputError
        For a missing or unreadable checkpoint or image, or an empty folder.
    """
    if not checkpoints:
        raise InputError("give at least one checkpoint to evaluate")
    for path in checkpoints:  # every file and codec factory is checked before any work
        try:
            ModelSpec.from_dict(read_checkpoint(path)["model_spec"]).downsampling  # noqa: B018
        except InputError as error:
            raise InputError(f"checkpoint {str(path)!r}: {error}") from None
    images = ImageSet.from_folder(dataset)
    torch_device = resolve_device(device)
    report: dict[str, Any] = {
        "name": name,
        "description": f"real entropy coding (compress/decompress) on {len(images)} image(s) "
        f"of {str(dataset)!r}, {torch_device.type}",
        "results": {key: [] for key in MEANS},
        "checkpoints": [str(p) for p in checkpoints],
        "decode_check": [],
    }
    if per_image:
        report["per_image"] = []
    for path in checkpoints:
        rows = evaluate_checkpoint(path, images, torch_device)
        means, worst = summarize(rows)
        for key, value in means.items():
            report["results"][key].append(value)
        report["decode_check"].append(
            {
                "max_abs_difference": worst.decode_mismatch,
                "image": worst.image,
                "tolerance": tolerance,
                "ok": worst.decode_mismatch <= tolerance,
            }
        )
        if per_image:
            report["per_image"].append([asdict(r) for r in rows])
    return report


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m moopt_lic.evaluate``."""
    parser = argparse.ArgumentParser(
        prog="python -m moopt_lic.evaluate",
        description="Compress and decompress images for real with trained checkpoints.",
    )
    parser.add_argument("checkpoints", nargs="+", help="moopt_lic checkpoint files")
    parser.add_argument("-d", "--dataset", required=True, help="folder of PNG/JPEG/WebP images")
    parser.add_argument("-o", "--out", help="write the JSON here (default: print it)")
    parser.add_argument("--name", default="moopt_lic", help="the curve's name in the JSON")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where to code; the CPU by default, as CompressAI's eval_model: on a GPU the "
        "encoder's and decoder's float rounding can differ and corrupt autoregressive models "
        "(mbt2018, cheng2020)",
    )
    parser.add_argument("--per-image", action="store_true", help="also every image's values")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted difference between the decoded image and the model's forward "
        "reconstruction (pixels in [0, 1])",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad input, 1: decode mismatch)."""
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(
            args.checkpoints,
            args.dataset,
            device=args.device,
            name=args.name,
            per_image=args.per_image,
            tolerance=args.tolerance,
        )
    except InputError as error:
        print(f"moopt_lic.evaluate: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    status = 0
    for path, check in zip(args.checkpoints, report["decode_check"], strict=True):
        if not check["ok"]:
            status = 1
            print(
                f"moopt_lic.evaluate: {path}: the decoded image {check['image']!r} differs from "
                f"the model's reconstruction by {check['max_abs_difference']:.3g} (tolerance "
                f"{check['tolerance']}): the entropy coder and the forward pass disagree",
                file=sys.stderr,
            )
    results = report["results"]
    for path, bpp, psnr in zip(args.checkpoints, results["bpp"], results["psnr-rgb"], strict=True):
        print(f"{path}: {bpp:.4f} bpp, {psnr:.2f} dB", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
