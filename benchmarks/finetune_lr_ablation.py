"""Does EqQP fine-tuning keep the operating point at a smaller learning rate?

In ``reproduce_rd.py`` arm C (EqQP fine-tuning of arm A's checkpoints, Adam lr 1e-4, 1000
steps) collapses to almost no rate. EqQP's step lowers both log-losses at the same first-order
rate, a guarantee for small steps along its direction; Adam's per-coordinate steps are
neither. This script fine-tunes the same checkpoints with EqQP at smaller learning rates and
reports the **validation** values (4 held-out training photos, as logged by the trainer;
never the evaluation photos), next to A+ (weighted sum continued) and C at lr 1e-4 from
``runs/reproduce_rd``. Run ``reproduce_rd.py`` first (it makes A's checkpoints).

    python benchmarks/finetune_lr_ablation.py            # ≈ 6 minutes a run on one core
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol import ROOT, Run, divergence, last_validation, train_to_end
from reproduce_rd import config_for, cpu_settings

LEARNING_RATES = (1e-5, 3e-5)
LAMBDAS = (0.0035, 0.013)
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT / "runs" / "reproduce_rd")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune_lr_ablation")
    args = parser.parse_args()
    settings = cpu_settings(args.source)
    rows = [
        "| λ | arm | fine-tune lr | validation bpp | validation PSNR (dB) |",
        "|---|---|---|---|---|",
    ]
    for lmbda in LAMBDAS:
        for arm in ("A+", "C"):
            folder = args.source / Run(arm, lmbda, SEED).name
            if (folder / "metrics.json").exists():
                bpp, psnr = last_validation(folder)
                rows.append(f"| {lmbda} | {arm} | 1e-4 | {bpp:.4f} | {psnr:.2f} |")
        for lr in LEARNING_RATES:
            folder = args.out / f"C-l{lmbda}-s{SEED}-lr{lr:g}"
            train_to_end({**config_for(Run("C", lmbda, SEED), settings), "lr": lr,
                          "out": str(folder)})  # fmt: skip
            if (error := divergence(folder)) is not None:
                rows.append(f"| {lmbda} | C | {lr:g} | diverged: {error} | |")
            else:
                bpp, psnr = last_validation(folder)
                rows.append(f"| {lmbda} | C | {lr:g} | {bpp:.4f} | {psnr:.2f} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows)
    print(text)
    (ROOT / "benchmarks" / "results" / "finetune_lr_ablation.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
