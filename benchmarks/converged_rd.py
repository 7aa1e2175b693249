"""Balanced against weighted-sum training on converged codecs, compared at equal rate.

The protocol, every choice a constant: ``converged_rd_protocol.py``; the calibrations:
``converged_rd_calibration.py``; the report: ``converged_rd_report.py``.

Reported (``benchmarks/results/converged_rd.md`` and ``docs/images/converged_rd.png``): the
noise floor (the anchors' and the controls' seed-to-seed spread of PSNR at equal rate and of
BD-rate), each arm's PSNR difference to its control at equal coded rate and its BD-rate
where the curves overlap, mean ± std over the seeds, the rate each targeted arm held, the
effective λ and weights, and the training-time ratios.

Runs are resumable: each invocation works for at most ``--minutes``, ``--jobs`` runs at a
time (1 thread each), finished runs are skipped and stopped ones continue from their last
checkpoint. Each finished run is kept in ``benchmarks/results/converged_rd_runs/`` (commit
it: ``kept_runs.py``), and put back from there into a runs folder that lacks it, so a fresh
checkout reports and goes on from every run kept. ``--pack`` writes the results of every
finished run into one archive (what a GPU machine sends back).

    python benchmarks/converged_rd.py --stage calibrate   # first: ≈ 2 h a codec on one core
    python benchmarks/converged_rd.py --stage probe-crops # the crop size (64² codec)
    python benchmarks/converged_rd.py --stage calibrate-finetune  # the fine-tuning length
    python benchmarks/converged_rd.py                     # repeat until it prints the tables
    python benchmarks/converged_rd.py --stage report      # the tables from what is coded
    python benchmarks/converged_rd.py --device cuda --jobs 12 --pack runs/converged.tar.gz
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from converged_rd_calibration import (
    calibrate,
    calibrate_finetune,
    probe_crops,
    write_calibration,
)
from converged_rd_protocol import (
    ARMS,
    CALIBRATION_STEPS,
    CODEC,
    CODECS,
    KEPT,
    KEPT_SCALARS,
    LAMBDAS,
    MEASURED,
    SEEDS,
    STARTED_FROM,
    all_runs,
    anchor_divergence,
    anchor_rate,
    config_for,
    kept_folder,
    link_calibration_anchor,
    measure_final_rate,
    run_folder,
)
from converged_rd_report import report
from kept_runs import add_files, keep, restore
from protocol import (
    ROOT,
    Run,
    Task,
    code_run,
    divergence,
    eval_images,
    evaluation,
    folder_done,
    run_metrics,
    run_tasks,
    to_code,
    train_to_end,
    trained_otherwise,
    write_results,
)


def train_and_code(values: dict | None, run: Run, args: argparse.Namespace) -> None:
    """Train one run to its end (``values``; None: build them now that the anchor is done),
    then code the evaluation photos once (a worker process); nothing if its anchor diverged."""
    if (message := anchor_divergence(run, args)) is not None:
        print(f"{run.name}: not trained, its anchor diverged: {message}", flush=True)
        return
    train_to_end(values if values is not None else config_for(run, args))
    folder = run_folder(run, args)
    if not args.no_coding and to_code(folder):
        code_run(folder, eval_images(), args.device)
    keep_and_measure(run, args)


def keep_and_measure(run: Run, args: argparse.Namespace) -> None:
    """Keep the finished run, then measure it (``measure_run``) and add the measurements to
    its kept copy: kept first, so that a failed measurement loses no result."""
    keep_run(run, args)
    measure_run(run, args)
    keep_run(run, args)


def measure_run(run: Run, args: argparse.Namespace) -> None:
    """Measure what a finished run keeps beside its results, once, while it has its weights:
    an anchor, the rate its targeted arms hold (here, not by each arm that holds it); every
    run, its final weights' rate on its last steps' crops (``final_rate``)."""
    if run_metrics(run_folder(run, args)) is None:
        return
    if run.arm == "ws":
        anchor_rate(run, args)
    measure_final_rate(run, args)


def keep_run(run: Run, args: argparse.Namespace) -> None:
    """Keep the run (``kept_runs.py``) once it has its result, coded or diverged, with its
    weights only if other runs start from it; a run kept already gets only what it measured
    since (``MEASURED``)."""
    folder, kept = run_folder(run, args), kept_folder(run, args)
    result = divergence(folder) is not None or evaluation(folder) is not None
    if not (folder_done(folder) and result):
        return
    if kept.exists():
        add_files(folder, kept, MEASURED)
    else:
        keep(folder, kept, KEPT_SCALARS, weights=run.arm in STARTED_FROM, files=MEASURED)


def restore_kept(args: argparse.Namespace) -> None:
    """Put every kept run back that the runs folder lacks."""
    restored = [run.name for run in all_runs(args)
                if restore(kept_folder(run, args), run_folder(run, args))]  # fmt: skip
    if restored:
        print(f"restored {len(restored)} kept run(s) from {args.kept}", flush=True)


def work(args: argparse.Namespace) -> None:
    """Train (and code) what is not finished, for at most ``--minutes``."""
    link_calibration_anchor(args)
    tasks, stale = [], []
    for run in all_runs(args):
        folder = run_folder(run, args)
        anchor = Run("ws", run.point, run.seed)
        after = None if run.arm == "ws" or folder_done(run_folder(anchor, args)) else anchor.name
        # a dependant's configuration needs its anchor finished, and not diverged
        ready = after is None and anchor_divergence(run, args) is None
        values = config_for(run, args) if ready else None
        if values is not None and (changed := trained_otherwise(folder, values)):
            stale.append(f"{run.name} ({'; '.join(changed)})")
        done = folder_done(folder) and (args.no_coding or not to_code(folder))
        tasks.append(Task(run.name, train_and_code, (values, run, args), after=after, done=done))
    if stale:
        sys.exit(f"trained with other settings than the protocol now says: {', '.join(stale)}; "
                 f"delete their folders in {args.out} to train them again")  # fmt: skip
    run_tasks(tasks, args.jobs, args.minutes)


def pack(args: argparse.Namespace) -> None:
    """One archive of every finished run's results (with what it measured once finished,
    ``MEASURED``: an anchor's target for its arms, every run's final rate), final checkpoint
    and logs."""
    with tarfile.open(args.pack, "w:gz") as archive:
        for run in all_runs(args):
            folder = run_folder(run, args)
            for name in ("metrics.json", "evaluation.json", "diverged.json", *MEASURED,
                         "checkpoint.pt", "tensorboard"):  # fmt: skip
                if (folder / name).exists():
                    archive.add(folder / name, arcname=f"{CODEC}/{run.name}/{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="all",
                        choices=("calibrate", "calibration", "calibrate-finetune",
                                 "probe-crops", "all", "report"),
                        help="calibrate: the convergence runs and their table; calibration: "
                        "only the table; calibrate-finetune: the fine-tuning length runs and "
                        "their table; probe-crops: the crop-size probe and its table; all: "
                        "train, code and report; report: the tables of what is coded")  # fmt: skip
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--lambdas", nargs="+", type=float, default=list(LAMBDAS),
                        choices=LAMBDAS, metavar="λ", help="a subset of the λ grid")  # fmt: skip
    parser.add_argument("--codecs", nargs="+", default=[CODEC], choices=list(CODECS),
                        help="--stage calibrate: the codecs to calibrate; --stage "
                        "calibrate-finetune: the first one's fine-tuning")  # fmt: skip
    parser.add_argument("--lengths", nargs="+", type=int, default=list(CALIBRATION_STEPS),
                        choices=CALIBRATION_STEPS, metavar="STEPS",
                        help="--stage calibrate: the lengths to train (default: all)")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=170, help="time for this invocation")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads a run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-coding", action="store_true", help="train only (code later)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "converged_rd")
    parser.add_argument("--kept", type=Path, default=KEPT,
                        help="where finished runs are kept, and restored from")  # fmt: skip
    parser.add_argument("--pack", type=Path, help="also write the finished runs to this .tar.gz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calibrations = {
        "calibrate": calibrate,
        "calibration": write_calibration,
        "calibrate-finetune": calibrate_finetune,
        "probe-crops": probe_crops,
    }
    if args.stage in calibrations:
        calibrations[args.stage](args)
        return
    restore_kept(args)
    if args.stage == "all":
        work(args)
    for run in all_runs(args):  # finished by an older invocation, or unpacked from --pack
        keep_and_measure(run, args)
    if args.pack:
        pack(args)
    text = report(args)
    print(text)
    flags = " ".join(flag for flag in sys.argv[1:])
    write_results("converged_rd", text, f"python benchmarks/converged_rd.py {flags}".strip())


if __name__ == "__main__":
    main()
