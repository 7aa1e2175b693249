"""Does λ still set the operating point under each balancer? Short runs per λ and balancer.

For every balancer, from scratch, and for two fine-tuning remedies (coarse-to-fine and EqQP
started from the weighted-sum checkpoint of the same λ), train the demo-size codec
(``mbt2018-mean``, N=64, M=96) on random 64×64 crops of ``../shared/data/train`` and code
the first ``--eval-images`` photos of ``../shared/data/eval`` for real. The table gives
bpp / PSNR per λ and the final effective λ (``λ·w_D/w_R``, averaged over the last logged
steps): if a balancer keeps the user's rate target, bpp rises with λ.

    python benchmarks/lambda_sweep.py                       # ≈ 45 min on 2 CPU cores
    python benchmarks/lambda_sweep.py --steps 5000 --finetune-steps 2000 --device cuda

Runs are resumable: each has its own folder under ``--out``; finished runs are skipped and
unfinished ones resumed, so the script can be started again after an interruption.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from protocol import DATA, LAMBDA_GRID, ROOT, divergence, run_metrics, scalars, train_to_end

LAMBDAS = LAMBDA_GRID


@dataclass(frozen=True)
class Arm:
    """One row of the table: a balancer, from scratch or fine-tuned from weighted sum."""

    label: str
    balancer: str
    finetune: bool = False
    loss_floor: float | None = None


ARMS = (
    Arm("weighted sum", "weighted-sum"),
    Arm("coarse-to-fine", "coarse-to-fine"),
    Arm("MGDA", "mgda"),
    Arm("EqQP", "eq-qp"),
    Arm("coarse-to-fine, shift m = −10 (λ-preserving)", "coarse-to-fine", loss_floor=-10.0),
    Arm("coarse-to-fine, fine-tuned from weighted sum", "coarse-to-fine", finetune=True),
    Arm("EqQP, fine-tuned from weighted sum", "eq-qp", finetune=True),
)


def run_name(arm: Arm, lmbda: float) -> str:
    floor = "" if arm.loss_floor is None else f"-m{-arm.loss_floor:g}"
    return f"{arm.balancer}{floor}{'-ft' if arm.finetune else ''}-{lmbda}"


def run_one(arm: Arm, lmbda: float, args: argparse.Namespace) -> None:
    """Train (or resume, or skip) one run."""
    common = dict(
        dataset=str(DATA / "train"),
        eval_dataset=str(args.eval_folder),
        N=64,
        M=96,
        lmbda=lmbda,
        balancer=arm.balancer,
        loss_floor=arm.loss_floor,
        patch_size=64,
        batch_size=8,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        progress=False,
        out=str(args.out / run_name(arm, lmbda)),
        checkpoint_every=100,
        eval_every=10**9,
        log_every=10,
    )
    if arm.finetune:
        source = args.out / run_name(Arm("", "weighted-sum"), lmbda) / "checkpoint.pt"
        train_to_end({**common, "steps": args.finetune_steps, "lr": args.finetune_lr,
                      "lr_schedule": "constant", "init_from": str(source)})  # fmt: skip
    else:
        train_to_end({**common, "steps": args.steps, "lr": 1e-3, "lr_schedule": "cosine"})


def effective_lambda(out: Path, last: int = 20) -> float:
    """The mean effective λ over the last ``last`` logged steps of a run."""
    values = [value for _, value in scalars(out, "balancer/effective_lambda")]
    return statistics.fmean(values[-last:])


def table(args: argparse.Namespace) -> str:
    header = "| arm | " + " | ".join(f"λ = {v}" for v in LAMBDAS) + " | bpp rises with λ? |"
    rows = [header, "|---" * (len(LAMBDAS) + 2) + "|"]
    for arm in ARMS:
        cells, rates = [], []
        for lmbda in LAMBDAS:
            out = args.out / run_name(arm, lmbda)
            if (message := divergence(out)) is not None:
                cells.append(f"diverged ({message.split(':')[0]})")
                rates.append(float("nan"))
                continue
            if (metrics := run_metrics(out)) is None:
                cells.append("not finished")
                rates.append(float("nan"))
                continue
            final = metrics["final_evaluation"]
            rates.append(final["bpp"])
            cells.append(
                f"{final['bpp']:.3f} / {final['psnr']:.2f} dB / λ_eff {effective_lambda(out):.2g}"
            )
        rising = all(b > a for a, b in itertools.pairwise(rates))  # False with a NaN
        rows.append(f"| {arm.label} | " + " | ".join(cells) + f" | {'yes' if rising else 'no'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="steps of a run from scratch")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--eval-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lambda_sweep")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.eval_folder = args.out / "eval_images"
    args.eval_folder.mkdir(exist_ok=True)
    for photo in sorted((DATA / "eval").glob("*.png"))[: args.eval_images]:
        link = args.eval_folder / photo.name
        if not link.exists():
            link.symlink_to(photo)

    with ProcessPoolExecutor(args.jobs) as pool:  # scratch runs first: fine-tunes need them
        for stage in (False, True):
            jobs = [
                pool.submit(run_one, arm, lmbda, args)
                for arm in ARMS
                if arm.finetune is stage
                for lmbda in LAMBDAS
            ]
            for job in jobs:
                job.result()
    report = table(args)
    print(report)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "lambda_sweep.md").write_text(
        f"{args.steps} steps from scratch, {args.finetune_steps} fine-tuning steps "
        f"(lr {args.finetune_lr}), seed {args.seed}, {args.eval_images} eval photos; "
        f"cells: bpp / PSNR (real coding) / final effective λ.\n\n{report}\n"
    )


if __name__ == "__main__":
    main()
