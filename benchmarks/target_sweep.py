"""PSNR at equal rate: every balancer holding the same rate targets (``--target-bpp``).

Protocol (constants below):

* codec: the demo size of ``python -m moopt_lic.train`` (``mbt2018-mean``, N 64, M 96);
  random 64 × 64 crops of ``../shared/data/train`` (4 photos held out for validation),
  batch 8, Adam lr 1e-3 with cosine decay, ``SCRATCH_STEPS`` steps;
* rate targets 0.15, 0.3 and 0.6 bpp (``TARGETS``), λ = 0.013 (only the starting trade-off
  under a target); seeds paired: a seed fixes the initial weights, data order, crops and
  noise of every arm;
* from scratch, each holding the target: the weighted sum (``ws``) and coarse-to-fine
  (``c2f``, the released settings);
* fine-tuning of the ``ws`` checkpoint at the same target for ``FINETUNE_STEPS`` steps at
  lr 5e-5, constant (the paper's recipe), each holding the target: the weighted sum
  continued (``ws+``, the control: equal total steps), EqQP (``eq-qp``), MGDA (``mgda``) and
  EqQP on the latent's Gram (``eq-qp-f``);
* evaluation: real entropy coding of the 24 photos of ``../shared/data/eval`` (never used
  for any choice).

Reported (``benchmarks/results/target_sweep.md``): per run the rate achieved in training
(mean of the last 10 % of steps), the real-coded bpp and PSNR, the effective λ and the
training time; per target the PSNR of each arm at (nearly) equal rate, and its difference to
the arm it should be compared with (``ws`` for ``c2f``, ``ws+`` for the fine-tunes).

Runs are resumable: finished runs are skipped, unfinished ones continue from their last
checkpoint, so the script can be started again after an interruption. About 50 minutes on
2 CPU cores per seed.

    python benchmarks/target_sweep.py                 # seed 0; then the table
    python benchmarks/target_sweep.py --seeds 0 1     # paired seeds
    python benchmarks/target_sweep.py --report        # the table from what is finished
    python benchmarks/target_sweep.py --arms ws c2f   # only the runs from scratch
    python benchmarks/target_sweep.py --arms ws ws+ nash-mtl imtl-g aligned-mtl upgrad \
        dwa uncertainty --label more                  # the methods of TorchJD and LibMTL
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from protocol import (
    DATA,
    FINETUNE_LR,
    HOLDOUT,
    ROOT,
    Arm,
    Run,
    Task,
    code_run,
    divergence,
    equal_rate_difference,
    eval_images,
    evaluation,
    folder_done,
    run_metrics,
    run_tasks,
    to_code,
    train_to_end,
)

TARGETS = (0.15, 0.3, 0.6)
LAMBDA = 0.013
SCRATCH_STEPS = 1500
FINETUNE_STEPS = 500

ARMS = {
    "ws": Arm("weighted-sum"),
    "c2f": Arm("coarse-to-fine"),
    "ws+": Arm("weighted-sum", start_from="ws"),
    "eq-qp": Arm("eq-qp", start_from="ws"),
    "mgda": Arm("mgda", start_from="ws"),
    "eq-qp-f": Arm("eq-qp", start_from="ws", features=True),
}
#: The arm each arm's PSNR is compared with: equal steps, same start.
CONTROL = {"c2f": "ws", "eq-qp": "ws+", "mgda": "ws+", "eq-qp-f": "ws+"}
#: The arms of a default run (the table in docs/benchmarks.md).
DEFAULT_ARMS = tuple(ARMS)
#: More fine-tunes of the ws checkpoints, with the methods of TorchJD and LibMTL
#: (``--arms ws ws+ nash-mtl imtl-g aligned-mtl upgrad dwa uncertainty``).
for _name in ("nash-mtl", "imtl-g", "aligned-mtl", "upgrad", "dwa", "uncertainty"):
    ARMS[_name] = Arm(_name, start_from="ws")
    CONTROL[_name] = "ws+"


def config_for(run: Run, out: Path) -> dict:
    values = dict(
        dataset=str(DATA / "train"),
        holdout=HOLDOUT,
        lmbda=LAMBDA,
        target_bpp=run.point,
        seed=run.seed,
        device="cpu",
        threads=1,
        progress=False,
        final_eval=False,
        out=str(out / run.name),
        checkpoint_every=250,
        eval_every=250,
        log_every=25,
        **ARMS[run.arm].settings(),
    )
    source = run.source(ARMS)
    if source is None:
        return {**values, "steps": SCRATCH_STEPS, "lr": 1e-3, "lr_schedule": "cosine"}
    return {
        **values,
        "steps": FINETUNE_STEPS,
        "lr": FINETUNE_LR,
        "lr_schedule": "constant",
        "init_from": str(out / source.name / "checkpoint.pt"),
    }


def train_and_code(run: Run, out: Path) -> None:
    """Train (or resume, or skip) one run, then code the evaluation photos once (a worker)."""
    train_to_end(config_for(run, out))
    folder = out / run.name
    if to_code(folder):
        code_run(folder, eval_images())


def work(runs: list[Run], out: Path, jobs: int) -> None:
    """Run everything, ``jobs`` at a time; a fine-tune starts when its source is done."""
    tasks = []
    for run in runs:
        source = run.source(ARMS)
        after = None if source is None or folder_done(out / source.name) else source.name
        done = folder_done(out / run.name) and not to_code(out / run.name)
        tasks.append(Task(run.name, train_and_code, (run, out), after=after, done=done))
    run_tasks(tasks, jobs)


def row_of(run: Run, out: Path) -> dict | None:
    folder = out / run.name
    if (error := divergence(folder)) is not None:
        return {"diverged": error}
    metrics, coded = run_metrics(folder), evaluation(folder)
    if metrics is None or coded is None:
        return None
    return {
        **coded,
        "achieved": metrics["target"]["achieved"],
        "effective_lambda": metrics["effective_lambda"],
        "seconds": metrics["train_seconds"],
    }


def report(runs: list[Run], out: Path, seeds: list[int]) -> str:
    arms = list(dict.fromkeys(run.arm for run in runs))
    compared = {arm: CONTROL[arm] for arm in arms if arm in CONTROL}
    lines = [
        "| arm | target bpp | seed | training bpp | coded bpp | PSNR (dB) | effective λ | "
        "train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = {run: row_of(run, out) for run in runs}
    for run, row in rows.items():
        if row is None:
            lines.append(f"| {run.arm} | {run.point} | {run.seed} | not finished | | | | |")
        elif "diverged" in row:
            lines.append(f"| {run.arm} | {run.point} | {run.seed} | diverged | | | | |")
        else:
            lines.append(
                f"| {run.arm} | {run.point} | {run.seed} | {row['achieved']:.3f} | "
                f"{row['bpp']:.3f} | {row['psnr']:.2f} | {row['effective_lambda']:.3g} | "
                f"{row['seconds']:.0f} |"
            )
    lines += [
        "",
        f"PSNR at equal rate (mean over seeds {', '.join(map(str, seeds))}; Δ against the "
        "arm with the same start and steps):",
        "",
        "| target bpp | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for target in TARGETS:
        cells = []
        for arm in arms:
            psnr = _mean_psnr(rows, arm, target, seeds)
            control = _mean_psnr(rows, CONTROL[arm], target, seeds) if arm in CONTROL else None
            if psnr is None:
                cells.append("–")
            elif control is None:
                cells.append(f"{psnr:.2f}")
            else:
                cells.append(f"{psnr:.2f} ({psnr - control:+.2f})")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The training rate is measured on random crops of the training photos and the coded rate "
        "on the whole evaluation photos: at one training target the arms' coded rates differ. "
        "Δ PSNR at equal coded rate: the arm's PSNR minus its control's, interpolated (linear "
        "in log bpp) at the arm's coded rate; only points inside the control's coded range "
        "count (their number in brackets).",
        "",
        "| seed | " + " | ".join(compared) + " |",
        "|---|" + "---|" * len(compared),
    ]
    for seed in seeds:
        cells = []
        for arm, control in compared.items():
            difference, count = _equal_rate_difference(rows, arm, control, seed)
            cells.append("–" if count == 0 else f"{difference:+.2f} ({count})")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curve(rows: dict, arm: str, seed: int) -> list[tuple[float, float]]:
    """(coded bpp, PSNR) of an arm's finished runs at one seed, by rate."""
    points = [rows.get(Run(arm, target, seed, unit="t")) for target in TARGETS]
    return sorted((p["bpp"], p["psnr"]) for p in points if p is not None and "diverged" not in p)


def _equal_rate_difference(rows: dict, arm: str, control: str, seed: int) -> tuple[float, int]:
    """Mean PSNR difference to the control's curve at the arm's coded rates, and how many."""
    return equal_rate_difference(_curve(rows, arm, seed), _curve(rows, control, seed))


def _mean_psnr(rows: dict, arm: str, target: float, seeds: list[int]) -> float | None:
    values = [rows.get(Run(arm, target, seed, unit="t")) for seed in seeds]
    if any(v is None or "diverged" in v for v in values):
        return None
    return statistics.mean(v["psnr"] for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, 1 thread each")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "target_sweep")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument(
        "--label", default="", help="results go to benchmarks/results/target_sweep_LABEL.md"
    )
    args = parser.parse_args()
    runs = [
        Run(arm, t, seed, unit="t") for seed in args.seeds for arm in args.arms for t in TARGETS
    ]
    if not args.report:
        work(runs, args.out, args.jobs)
    text = report(runs, args.out, args.seeds)
    print(text)
    name = f"target_sweep_{args.label}.md" if args.label else "target_sweep.md"
    flags = [flag for flag in sys.argv[1:] if flag != "--report"]
    command = " ".join(["python benchmarks/target_sweep.py", *flags])
    (ROOT / "benchmarks" / "results" / name).write_text(f"Command: `{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
