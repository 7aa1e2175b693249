"""The converged-codec reproduction's protocol (``benchmarks/converged_rd.py``): every
choice as a constant, and the configuration of each run it trains.

Protocol:

* codec: ``mbt2018-mean`` with N = 16, M = 24 (``CODEC``; the calibration also trained
  N = 32, M = 48), the size whose steps 2 CPU cores can afford; random 128 × 128 crops of
  ``../shared/data/train`` (4 photos held out for validation), batch 4 (64² crops, batch 8,
  coded whole photos at twice the rate they should: ``--stage probe-crops``; 256² crops,
  batch 1, had not converged by 128000 steps); Adam lr 1e-3
  with cosine decay to 0, aux Adam 1e-3, gradient-norm clip 1.0.
* calibration (``--stage calibrate``): the weighted sum at λ = 0.0035, seed 0, trained for
  ``CALIBRATION_STEPS`` steps, each run with its own full cosine schedule; a codec is
  converged when the last doubling of steps gained less than 0.1 dB of validation PSNR at
  equal rate (the doubling's saving of R-D cost J = R + λ·255²·MSE, counted in dB of
  distortion: runs of different lengths land at different rates, so PSNR alone misleads).
  The smallest converged length is ``SCRATCH_STEPS``:
  ``benchmarks/results/converged_rd_calibration.md``.
* anchors ``ws``: the weighted sum from scratch for ``SCRATCH_STEPS`` at 4 λ (``LAMBDAS``,
  where the codec's validation curve rises: 0.12–0.30 bpp, not the 0.1–0.8 first
  aimed at, because it flattens above 0.3 bpp) and 3 seeds,
  **paired**: a seed fixes the initial weights, the data order, the crops and the
  quantisation noise of every arm, so arms differ only by how they train.
* fine-tunes of each anchor for ``FINETUNE_STEPS`` at lr 5e-5, constant (the paper's
  recipe): ``ws+`` (the weighted sum continued: the control, equal total steps), ``ws+'``
  (the same on data drawn by another seed: the noise of the fine-tuning alone), ``eq-qp``
  (no target), and, each holding the anchor's training rate (``--target-bpp``: its final
  weights' mean rate on the crops its fine-tunes train on, ``anchor_rate``): ``eq-qp-t``,
  ``eq-qp-f-t`` (``--features``), ``c2f-t`` (coarse-to-fine), ``nash-mtl-t`` and ``imtl-g-t``;
* ``c2f-scratch-t``: coarse-to-fine from scratch for ``SCRATCH_STEPS``, holding the anchor's
  training rate (compared with the anchors: equal steps);
* evaluation: real entropy coding of the 24 photos of ``../shared/data/eval`` (never used
  for any choice); and, to place each coded codec on its run's training, its final weights'
  rate on the crops of its last tenth of steps (``final_rate``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
from pathlib import Path

from protocol import (
    DATA,
    FINETUNE_LR,
    HOLDOUT,
    RESULTS,
    Arm,
    Run,
    divergence,
    run_metrics,
    scalar_histories,
    trained_otherwise,
)

#: The codecs calibrated, by name; the protocol trains ``CODEC``.
CODECS = {
    "N32-M48": {"model": "mbt2018-mean", "N": 32, "M": 48, "patch_size": 64, "batch_size": 8},
    "N16-M24": {"model": "mbt2018-mean", "N": 16, "M": 24, "patch_size": 64, "batch_size": 8},
    "N16-M24-p256": {
        "model": "mbt2018-mean",
        "N": 16,
        "M": 24,
        "patch_size": 256,
        "batch_size": 1,
    },
    # the protocol's: 4 images a step at the pixels of one 256² crop
    "N16-M24-p128b4": {
        "model": "mbt2018-mean",
        "N": 16,
        "M": 24,
        "patch_size": 128,
        "batch_size": 4,
    },
}
#: N16-M24 was cheaper a step than N32-M48 and reached a lower R-D cost at 32000 and 64000
#: steps, but on 64² crops its hyperprior sees one hyper-latent a crop: whole photos cost it
#: 1.8–2.3× the crops' rate, and fine-tuning on larger crops halved their rate at the same
#: PSNR (``--stage probe-crops``). On 256² crops, batch 1, it had not converged by 128000
#: steps; on 128² crops, batch 4 (the same pixels a step), it converged by 128000 steps.
CODEC = "N16-M24-p128b4"
CALIBRATION_LAMBDA = 0.0035
CALIBRATION_STEPS = (2000, 4000, 8000, 16000, 32000, 64000, 128000)
#: Where the calibration of ``CODEC`` converged (the doubling from 64000 to 128000 steps
#: gained 0.09 dB of validation PSNR at equal rate, 0.07 dB on the training crops).
SCRATCH_STEPS = 128000
#: The paper fine-tunes 50 epochs after 100–150 from scratch (a third or more); a sixteenth
#: (an eighth of the 64²-crop codec's 64000 steps) is what the budget allows.
#: ``--stage calibrate-finetune`` on the 64²-crop codec showed EqQP moving away from the
#: control on the validation photos only after 4000 steps.
FINETUNE_STEPS = 8000
#: CompressAI's zoo λ of qualities 1, 2, 4 and 6. This codec's R-D curve flattens above
#: ≈ 0.3 bpp (seed 0's anchors at λ 0.0035, 0.013, 0.0483 validate at 0.149, 0.229, 0.299
#: bpp for 32.30, 33.27, 33.53 dB: its N = 16 decoder, not the rate, limits the quality), so
#: quality 8 (λ 0.18), first chosen for 0.1–0.8 bpp, would add a point on the flat part and
#: quality 1 takes its place at the low end.
LAMBDAS = (0.0018, 0.0035, 0.013, 0.0483)
SEEDS = (0, 1, 2)
ARMS = {
    "ws": Arm("weighted-sum"),
    "ws+": Arm("weighted-sum", start_from="ws"),
    "ws+'": Arm("weighted-sum", start_from="ws"),
    "eq-qp": Arm("eq-qp", start_from="ws"),
    "eq-qp-t": Arm("eq-qp", start_from="ws"),
    "eq-qp-f-t": Arm("eq-qp", start_from="ws", features=True),
    "c2f-t": Arm("coarse-to-fine", start_from="ws"),
    "nash-mtl-t": Arm("nash-mtl", start_from="ws"),
    "imtl-g-t": Arm("imtl-g", start_from="ws"),
    "c2f-scratch-t": Arm("coarse-to-fine"),
}
#: Arms that hold the anchor's training rate; they start once the anchor is done.
TARGETED = {"eq-qp-t", "eq-qp-f-t", "c2f-t", "nash-mtl-t", "imtl-g-t", "c2f-scratch-t"}
#: The control fine-tuned on other data: its crops, their order and noise (and the held-out
#: photos) drawn by seed + ``RESEED``; against ``ws+`` it measures what fine-tuning alone varies.
RESEEDED = "ws+'"
RESEED = 100
#: The arm each arm is compared with: the same start and the same number of steps.
CONTROLS = ("ws", "ws+", RESEEDED)
CONTROL = {arm: "ws+" for arm, spec in ARMS.items() if spec.start_from and arm not in CONTROLS}
CONTROL["c2f-scratch-t"] = "ws"
#: The share of a run's last steps where it has settled: its training scalars' means there.
SETTLED_SHARE = 0.1
#: The file in a finished anchor's folder with the rate its targeted arms hold (``anchor_rate``).
ANCHOR_RATE = "finetune_crop_rate.json"
#: The file in a finished run's folder with its final weights' rate on its last steps' crops
#: (``final_rate``).
FINAL_RATE = "final_crop_rate.json"
#: What a finished run measures once and keeps beside its results.
MEASURED = (ANCHOR_RATE, FINAL_RATE)
#: Each arm's variant in the interleaved per-step timing of every method (the trainer's
#: defaults: sequential Gram, coarse-to-fine re-evaluated every step).
OVERHEAD_VARIANTS = {
    "ws": "weighted sum (glue)",
    "ws+": "weighted sum (glue)",
    "ws+'": "weighted sum (glue)",
    "eq-qp": "EqQP exact, sequential",
    "eq-qp-t": "EqQP exact, sequential",
    "eq-qp-f-t": "EqQP features (latent y)",
    "c2f-t": "coarse-to-fine, re-evaluate every step",
    "nash-mtl-t": "nash-mtl, sequential",
    "imtl-g-t": "imtl-g, sequential",
    "c2f-scratch-t": "coarse-to-fine, re-evaluate every step",
}
#: The interleaved timing of ``CODEC`` as its runs train (one thread, 4 × 128² crops):
#: ``python benchmarks/step_overhead.py --N 16 --M 24 --batch 4 --threads 1 --rounds 40
#: --out benchmarks/results/step_overhead_protocol_cpu``.
OVERHEAD_TIMES = RESULTS / "step_overhead_protocol_cpu.json"
#: Where the finished runs are kept (committed): ``kept_runs.py``.
KEPT = RESULTS / "converged_rd_runs"
#: The scalars of a run's log that are kept: the training rate, the last validation
#: (``last_validation``), the final weights (``converged_rd_report.run_table``).
KEPT_SCALARS = ("train/rate_bpp", "val/bpp", "val/psnr", "balancer/weight_rate",
                "balancer/weight_distortion")  # fmt: skip
#: The arms other runs start from: their kept runs keep their weights.
STARTED_FROM = frozenset(spec.start_from for spec in ARMS.values() if spec.start_from)


def calibration_folder(codec: str, steps: int, args: argparse.Namespace) -> Path:
    return args.out / "calibrate" / codec / f"ws-l{CALIBRATION_LAMBDA}-s0-steps{steps}"


def common_settings(
    run_folder: Path, lmbda: float, seed: int, args: argparse.Namespace, codec: str = CODEC
) -> dict:
    """What every run shares: data, codec, λ, seed, logging; one CPU thread a run."""
    return dict(
        dataset=str(DATA / "train"),
        holdout=HOLDOUT,
        **CODECS[codec],
        lmbda=lmbda,
        seed=seed,
        device=args.device,
        threads=args.threads,
        progress=False,
        final_eval=False,
        out=str(run_folder),
        checkpoint_every=500,
        eval_every=1000,
        log_every=100,
    )


def calibration_config(codec: str, steps: int, args: argparse.Namespace) -> dict:
    folder = calibration_folder(codec, steps, args)
    values = common_settings(folder, CALIBRATION_LAMBDA, 0, args, codec)
    return {**values, **ARMS["ws"].settings(), "steps": steps, "lr": 1e-3,
            "lr_schedule": "cosine"}  # fmt: skip


def settled_means(folder: Path, *tags: str) -> tuple[float, ...]:
    """Means of the run's scalars ``tags`` over its last ``SETTLED_SHARE`` of steps, where a
    converged run has settled (training scalars: random crops, with quantisation noise)."""
    histories = scalar_histories(folder, *tags)
    settled = max(history[-1][0] for history in histories.values()) * (1 - SETTLED_SHARE)
    return tuple(statistics.fmean(value for step, value in history if step > settled)
                 for history in histories.values())  # fmt: skip


def finetune_crop_rates(anchor: Run, args: argparse.Namespace, codec: str = CODEC) -> list[float]:
    """The finished anchor's training rate (bpp) at each step of its fine-tunes' data: the
    crops and quantisation noise that step ``s`` of a fine-tune of the anchor trains on, coded
    by the anchor's final weights (what that fine-tune's step 0 computes, for every step)."""
    import torch

    from moopt_lic import TrainConfig
    from moopt_lic.trainer import Trainer

    values = config_for(Run("ws+", anchor.point, anchor.seed), args, codec)
    trainer = Trainer(TrainConfig(**values), Path(values["out"]), resume_from=None)
    with torch.no_grad():
        return [float(trainer.losses(x, seeds)["rate"]) for x, seeds in trainer.batches()]


def anchor_rate(anchor: Run, args: argparse.Namespace, codec: str = CODEC) -> float:
    """The rate (bpp) that the arms holding the anchor's operating point target: the anchor's
    mean training rate over its fine-tunes' crops (``finetune_crop_rates``, 32000 crops).

    Not the anchor's own log: over its last tenth it logs one step in a hundred, 512 crops,
    the same ones at every λ of a seed; seed 0's logs read 1.7–2.0 % below these 32000 crops
    at every λ (the report shows both), which pulled all its targeted arms below the
    control's rate by the size of the effect measured. Measured once (≈ 100 s on a core) and
    kept in the anchor's folder as ``ANCHOR_RATE``.
    """
    from moopt_lic.checkpoint import atomic_write_text

    path = run_folder(anchor, args, codec) / ANCHOR_RATE
    if not path.exists():
        rates = finetune_crop_rates(anchor, args, codec)
        measured = {"rate_bpp": statistics.fmean(rates), "steps": len(rates)}
        # a reader, or a second process measuring, never sees half a file
        atomic_write_text(json.dumps(measured, indent=1), path)
    return round(json.loads(path.read_text())["rate_bpp"], 4)


def final_crop_rates(run: Run, args: argparse.Namespace, codec: str = CODEC) -> list[float]:
    """The finished run's final weights' training rate (bpp: likelihoods under additive
    noise, as training estimates it) at each of its last ``achieved_steps`` steps: on the
    crops and quantisation noise those steps trained on, with the weights the evaluation
    codes.

    Paired twice: with the rate those same steps trained at (a targeted run keeps each
    step's), so that a run whose weights swing from step to step shows where its last
    snapshot sits in the swing; and with its control's final weights (a seed draws the same
    crops and noise for runs of the same length: every arm but ``RESEEDED`` and its control).
    """
    import torch

    from moopt_lic import TrainConfig
    from moopt_lic.targets import achieved_steps
    from moopt_lic.trainer import Trainer

    folder = run_folder(run, args, codec)
    values = config_for(run, args, codec)
    if changed := trained_otherwise(folder, values):  # its last steps were other crops
        raise ValueError(f"{folder}: trained with other settings ({'; '.join(changed)})")
    values["init_from"] = str(folder / "checkpoint.pt")
    trainer = Trainer(TrainConfig(**values), folder, resume_from=None)
    # the batches of the run's last steps: a batch depends on its step alone
    trainer.step = trainer.total_steps - achieved_steps(trainer.total_steps)
    with torch.no_grad():
        return [float(trainer.losses(x, seeds)["rate"]) for x, seeds in trainer.batches()]


def final_rate(run: Run, args: argparse.Namespace, codec: str = CODEC) -> float | None:
    """The mean of the run's ``final_crop_rates``, as ``measure_final_rate`` kept it in the
    run's folder (``FINAL_RATE``); None if it has not."""
    path = run_folder(run, args, codec) / FINAL_RATE
    return float(json.loads(path.read_text())["rate_bpp"]) if path.exists() else None


def measure_final_rate(run: Run, args: argparse.Namespace, codec: str = CODEC) -> None:
    """Measure the run's ``final_rate`` once (seconds for a fine-tune, ≈ 3 minutes on a core
    for a run from scratch), unless it cannot: not finished, diverged, or kept without its
    weights (``kept_runs.py``)."""
    from moopt_lic.checkpoint import atomic_write_text, load_safely

    folder = run_folder(run, args, codec)
    checkpoint = folder / "checkpoint.pt"
    if (folder / FINAL_RATE).exists() or run_metrics(folder) is None:
        return
    if divergence(folder) is not None or not checkpoint.exists():
        return
    if "model" not in load_safely(checkpoint):
        return
    rates = final_crop_rates(run, args, codec)
    measured = {"rate_bpp": statistics.fmean(rates), "steps": len(rates)}
    atomic_write_text(json.dumps(measured, indent=1), folder / FINAL_RATE)


def anchor_divergence(run: Run, args: argparse.Namespace, codec: str = CODEC) -> str | None:
    """Why the run's anchor stopped on a NaN/∞ (None if it did not, or the run is an
    anchor): a run that starts from it, or holds its rate, is then not trained."""
    if run.arm == "ws":
        return None
    return divergence(run_folder(Run("ws", run.point, run.seed), args, codec))


def run_folder(run: Run, args: argparse.Namespace, codec: str = CODEC) -> Path:
    """Where a run of the protocol trains ``codec`` (one folder of runs a codec)."""
    return args.out / codec / run.name


def kept_folder(run: Run, args: argparse.Namespace, codec: str = CODEC) -> Path:
    """Where the run's compact copy is kept once it has finished (``kept_runs.py``)."""
    return args.kept / codec / run.name


def config_for(run: Run, args: argparse.Namespace, codec: str = CODEC) -> dict:
    """The run's full configuration (an arm's target needs its anchor finished)."""
    seed = run.seed + RESEED if run.arm == RESEEDED else run.seed
    values = {**common_settings(run_folder(run, args, codec), run.point, seed, args, codec),
              **ARMS[run.arm].settings()}  # fmt: skip
    anchor_run = Run("ws", run.point, run.seed)
    anchor = run_folder(anchor_run, args, codec)
    if run.arm in TARGETED:
        values["target_bpp"] = anchor_rate(anchor_run, args, codec)
    if run.source(ARMS) is None:
        return {**values, "steps": SCRATCH_STEPS, "lr": 1e-3, "lr_schedule": "cosine"}
    return {**values, "steps": FINETUNE_STEPS, "lr": FINETUNE_LR, "lr_schedule": "constant",
            "init_from": str(anchor / "checkpoint.pt")}  # fmt: skip


def link_calibration_anchor(args: argparse.Namespace, codec: str = CODEC) -> None:
    """Let the calibration run of ``SCRATCH_STEPS`` be the anchor at the calibration λ and
    seed 0 (a link, not a second training of the same run), if it finished with exactly the
    anchor's settings and the anchor has no folder yet."""
    anchor = run_folder(Run("ws", CALIBRATION_LAMBDA, 0), args, codec)
    calibrated = calibration_folder(codec, SCRATCH_STEPS, args)
    if anchor.exists() or anchor.is_symlink() or run_metrics(calibrated) is None:
        return
    if trained_otherwise(calibrated, config_for(Run("ws", CALIBRATION_LAMBDA, 0), args, codec)):
        return
    anchor.parent.mkdir(parents=True, exist_ok=True)
    anchor.symlink_to(os.path.relpath(calibrated, anchor.parent))


def all_runs(args: argparse.Namespace) -> list[Run]:
    """Seed by seed, its anchors (every other run needs one) then its fine-tunes (short: each
    arm has paired results a seed at a time, before the next seed's long anchors); the arms
    from scratch last."""
    fine_tunes = [arm for arm in args.arms if ARMS[arm].start_from is not None]
    from_scratch = [arm for arm in args.arms if arm != "ws" and ARMS[arm].start_from is None]
    by_seed = [Run(arm, lm, seed) for seed in args.seeds for arm in ("ws", *fine_tunes)
               for lm in args.lambdas]  # fmt: skip
    return by_seed + [Run(arm, lm, seed) for seed in args.seeds for arm in from_scratch
                      for lm in args.lambdas]  # fmt: skip


@functools.cache
def interleaved_timing(path: Path) -> dict:
    """The interleaved timing at ``path`` (times, memory, settings), read once: the budget
    and the report ask for every arm."""
    return json.loads(path.read_text())


@functools.cache
def median_step_times(path: Path) -> dict[str, float]:
    """The median step time of each variant in the interleaved timing at ``path``."""
    times = interleaved_timing(path)["times"]
    return {variant: statistics.median(values) for variant, values in times.items()}


def interleaved_settings() -> str:
    """What the interleaved timing ran on, in words ("" without it)."""
    if not OVERHEAD_TIMES.exists():
        return ""
    ran = interleaved_timing(OVERHEAD_TIMES)["settings"]
    return (f"{OVERHEAD_TIMES.with_suffix('.md').name}: {ran['model']} N = {ran['N']}, "
            f"M = {ran['M']}, batch {ran['batch']} × {ran['patch']}² on {ran['threads']} "
            f"thread{'s' if ran['threads'] != 1 else ''}, {ran['rounds']} rounds")  # fmt: skip


def interleaved_ratio(arm: str, control: str) -> float | None:
    """The arm's median step over its control's in the interleaved timing (None without it)."""
    if not OVERHEAD_TIMES.exists():
        return None
    medians = median_step_times(OVERHEAD_TIMES)
    return medians[OVERHEAD_VARIANTS[arm]] / medians[OVERHEAD_VARIANTS[control]]
