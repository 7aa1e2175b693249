"""The command line of ``python -m moopt_lic.train``: train a codec with a moopt balancer.

With no arguments it trains a small codec on the built-in scikit-image photos with the
coarse-to-fine balancer holding ``DEMO_TARGET_BPP`` bits per pixel, and evaluates it with real
entropy coding. Bad input (a missing
folder, a corrupt image, an unknown name, λ ≤ 0) ends with one line on stderr and exit
status 2; a diverged run (NaN/∞) with exit status 1, its last good checkpoint kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from moopt_lic.config import DEMO_TARGET_BPP, config_from_args, typed_flags
from moopt_lic.effective_lambda import lambda_offset
from moopt_lic.errors import InputError
from moopt_lic.trainer import TrainingDiverged, train_with_flags

__all__ = ["lambda_note", "main", "summary", "target_line"]


def summary(metrics: dict[str, Any]) -> str:
    """Return the lines printed at the end of a run."""
    lines = [f"trained {metrics['steps']} steps in {metrics['train_seconds']:.0f} s"]
    final = metrics.get("final_evaluation")
    if final:
        lines.append(
            f"held-out images, real entropy coding: {final['bpp']:.4f} bpp, "
            f"PSNR {final['psnr']:.2f} dB ({len(final['images'])} image(s))"
        )
    lines.extend(target_line(metrics))
    lines.extend(lambda_note(metrics))
    out = metrics["out"]
    lines.append(
        f"outputs in {out}: checkpoint.pt, checkpoint_best.pt, metrics.json, "
        f"tensorboard/ (tensorboard --logdir {out}/tensorboard)"
    )
    return "\n".join(lines)


def lambda_note(metrics: dict[str, Any]) -> list[str]:
    """Say which trade-off the updates followed, and warn when it is not the user's λ."""
    lmbda, effective = metrics["lambda"], metrics["effective_lambda"]
    lines = [
        f"λ = {lmbda}; effective λ of the last steps (λ·mean w_D / mean w_R) = {effective:.3g}"
    ]
    offset = lambda_offset(lmbda, effective)
    if metrics["balancer"] == "weighted-sum" or metrics.get("target") or offset is None:
        return lines
    lines.append(
        f"note: under {metrics['balancer']} the updates followed a trade-off {offset}, so the "
        f"codec will not sit where a weighted sum at this λ would (the balancer works on "
        f"log-losses, in which λ cancels while D ≫ 1). To get the rate you want, name it: "
        f"--target-bpp B holds it under any balancer (docs: 'Train a codec')"
    )
    return lines


def target_line(metrics: dict[str, Any]) -> list[str]:
    """Return the target, what the last steps achieved, and the real-coded value beside it."""
    target = metrics.get("target")
    if not target:
        return []
    unit = "bpp" if target["objective"] == "rate" else "dB"
    line = (
        f"target: {target['objective']} {target['value']:g} {unit}; achieved in training "
        f"(mean of the last 10 % of steps): {target['achieved']:.4g} {unit}"
    )
    final = metrics.get("final_evaluation")
    if final:
        coded = final["bpp"] if target["objective"] == "rate" else final["psnr"]
        line += (
            f"; held-out images, real coding: {coded:.4g} {unit} (the target holds the "
            f"training crops; whole photos of other content code differently)"
        )
    return [line]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Under torchrun every process runs it; only rank 0 prints (the errors caught here are
    the same on every rank: bad input, or a NaN in the globally averaged losses).
    """
    speak = os.environ.get("RANK", "0") == "0"
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--target-bpp", str(DEMO_TARGET_BPP)]
        if speak:
            print(
                f"no arguments: the demo run, a small codec on scikit-image's photos, trained "
                f"with the coarse-to-fine balancer holding {DEMO_TARGET_BPP} bpp "
                f"(--target-bpp {DEMO_TARGET_BPP}); --help lists the flags"
            )
    try:
        result = train_with_flags(config_from_args(argv), typed_flags(argv))
    except SystemExit as exit:  # argparse: --help (0) or a bad flag (2, one line printed)
        return int(exit.code or 0)
    except InputError as error:
        if speak:
            print(f"moopt_lic.train: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        if speak:
            print(f"moopt_lic.train: stopped: {error}", file=sys.stderr)
        return 1
    if speak:
        if result.already_finished:
            print(
                f"the run in {result.out} had already finished ({result.metrics['steps']} "
                f"steps): nothing to train; its summary:"
            )
        print(summary(result.metrics))
    return 0
