"""The paper's claim at a scale this machine can train: BD-rate of balanced vs weighted-sum.

Protocol (every choice is a constant or a flag below; ``--scale large`` is the larger preset):

* codec: ``mbt2018-mean`` with N = 64, M = 96 (the mean-scale hyperprior of the paper's
  appendix, at the PILOT's CPU size); random 64 × 64 crops of ``../shared/data/train``,
  batch 8; Adam, lr 1e-3 with cosine decay, aux Adam 1e-3, grad-norm clip 1.0;
* λ grid: 0.0035, 0.0067, 0.013, 0.025 (CompressAI's MSE grid); for the coarse-to-fine arm
  also 0.05 and 0.1, since under it λ hardly moves the operating point (METHOD.md), and for
  arm A also 0.00045, 0.0009 and 0.0018, so its curve reaches the low rates where the
  balanced arms land (run after the issue's comparisons; the curves must overlap);
* seeds 0 and 1, **paired**: a seed fixes the initial weights, the data order, the crops and
  the quantisation noise of every arm, so the arms differ only by the balancer;
* arm A: weighted sum from scratch, ``--steps`` steps;
* arm B: coarse-to-fine from scratch, the same steps (FAMO-style, shift −1, logit lr 0.025,
  γ 0.003: the released code's values, untuned);
* arm B′ (only with ``--arms``, e.g. ``--arms A A+ C B E B'``: ≈ 70 more minutes on 2
  cores): coarse-to-fine with the shift m = −10 (``--loss-floor -10``), which keeps λ's role
  while the losses are below ≈ 10 (benchmarks/lambda_sweep.py);
* arm C: EqQP fine-tuning of A's checkpoint for ``--finetune-steps`` at lr 1e-4 (constant),
  against A continued with the weighted sum for the same steps and lr ("A+"): equal totals;
* arm E: EqQP fine-tuning in ``--features`` mode (the Gram of the latent's gradients), same
  steps and lr as C;
* evaluation: real entropy coding of the 24 photos of ``../shared/data/eval`` (never used for
  any choice); validation during training on 4 held-out training photos (the PSNR-vs-step
  curves).

Reported: BD-rate (pchip and cubic) of B vs A and of C vs A+, per seed and mean ± std over
seeds; the noise floor, i.e. the spread of the paired BD-rate across seeds and the BD-rate of
A's seed 1 against A's seed 0; the λ → (bpp, PSNR) map of every arm; training wall-time
ratios; the R-D plot and the PSNR-vs-step plot. The tables go to
``benchmarks/results/reproduce_rd_<scale>_<label>.md``, the plot to ``docs/images/``; both are
quoted in ``docs/benchmarks.md``.

Runs are resumable and the script continues across sessions: each invocation works for at
most ``--minutes`` (default 85), ``--jobs`` runs in parallel (1 thread each), then stops; the
unfinished runs resume from their last checkpoint next time, finished ones are skipped.
``--stage`` splits the work where training and evaluation happen on different machines.

    python benchmarks/reproduce_rd.py                   # repeat until it prints the table
    python benchmarks/reproduce_rd.py --stage report    # the table from what is finished
    python benchmarks/reproduce_rd.py --device cuda --jobs 15 --eval-device cuda \
        --eval-jobs 12 --label h200 --out runs/reproduce_rd_h200   # the small preset, one GPU
    python benchmarks/reproduce_rd.py --scale large --device cuda --jobs 4 --label h200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MOOPT_DATA", ROOT.parent / "shared" / "data"))

LAMBDAS = (0.0035, 0.0067, 0.013, 0.025)
#: B hardly moves with λ (METHOD.md), so it also gets two larger λ; A gets three smaller ones
#: (CompressAI's q1 = 0.0018 and below) so that its curve reaches the low rates where the
#: balanced arms land (the H200 partial run: B at 0.09–0.17 bpp, A at λ = 0.0035 ≥ 0.40 bpp).
EXTRA_LAMBDAS_BALANCED = (0.05, 0.1)
LOWER_LAMBDAS_ANCHOR = (0.00045, 0.0009, 0.0018)
SEEDS = (0, 1)
SCALES = {
    #          steps, finetune steps, patch, batch, N, M
    "small": (3000, 1000, 64, 8, 64, 96),  # ≈ 4.5 h on 2 CPU cores, minutes on one GPU
    "large": (60000, 15000, 256, 16, 128, 192),  # a GPU's job
}


@dataclass(frozen=True)
class Arm:
    """How an arm trains: its balancer, and whether it fine-tunes arm A's checkpoint."""

    balancer: str
    finetune: bool = False
    loss_floor: float | None = None
    features: bool = False


ARMS = {
    "A": Arm("weighted-sum"),
    "B": Arm("coarse-to-fine"),
    "B'": Arm("coarse-to-fine", loss_floor=-10.0),
    "A+": Arm("weighted-sum", finetune=True),
    "C": Arm("eq-qp", finetune=True),
    "E": Arm("eq-qp", finetune=True, features=True),
}
#: (label, anchor arm, test arm): the BD-rates reported, each paired by seed.
COMPARISONS = (("B vs A", "A", "B"), ("B′ vs A", "A", "B'"), ("C vs A+", "A+", "C"),
               ("E vs A+", "A+", "E"))  # fmt: skip


def lambdas_of(arm: str) -> tuple[float, ...]:
    """Every λ the arm is trained at, ascending."""
    return tuple(sorted({lm for name, lambdas in SCHEDULE if name == arm for lm in lambdas}))


@dataclass(frozen=True)
class Run:
    """One training run: an arm at one λ and seed."""

    arm: str
    lmbda: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.replace('+', 'plus').replace(chr(39), 'p')}-l{self.lmbda}-s{self.seed}"

    @property
    def source(self) -> Run | None:
        """The run whose checkpoint this one fine-tunes."""
        return Run("A", self.lmbda, self.seed) if ARMS[self.arm].finetune else None


#: (arm, λs) in the order the runs start: the issue's comparisons (C vs A+, B vs A) first,
#: then A's lower λ, then the extra arms (the cheap fine-tune E before the from-scratch B′);
#: a fine-tune starts once its A checkpoint is done.
SCHEDULE = (
    ("A", LAMBDAS),
    ("A+", LAMBDAS),
    ("C", LAMBDAS),
    ("B", LAMBDAS + EXTRA_LAMBDAS_BALANCED),
    ("A", LOWER_LAMBDAS_ANCHOR),
    ("E", LAMBDAS),
    ("B'", LAMBDAS),
)


#: The arms of a full run: the issue's comparisons (B vs A, C vs A+) and the optional arm E.
DEFAULT_ARMS = ("A", "A+", "C", "B", "E")


def all_runs(args: argparse.Namespace) -> list[Run]:
    """Every run of the protocol's chosen arms (``--arms``), in the order they start."""
    return [Run(arm, lm, seed) for arm, lambdas in SCHEDULE if arm in args.arms
            for seed in SEEDS for lm in lambdas]  # fmt: skip


def last_validation(folder: Path) -> tuple[float, float]:
    """(bpp, PSNR) of a run's last validation (held-out training photos), from its log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars("val/bpp")[-1].value, events.Scalars("val/psnr")[-1].value


def config_for(run: Run, args: argparse.Namespace) -> dict:
    steps, finetune, patch, batch, n, m = SCALES[args.scale]
    arm = ARMS[run.arm]
    common = dict(
        dataset=str(DATA / "train"),
        holdout=4,
        N=n,
        M=m,
        patch_size=patch,
        batch_size=batch,
        lmbda=run.lmbda,
        seed=run.seed,
        device=args.device,
        threads=args.threads,
        progress=False,
        final_eval=False,
        out=str(args.out / run.name),
        checkpoint_every=200,
        eval_every=250,
        log_every=50,
        balancer=arm.balancer,
        loss_floor=arm.loss_floor,
        features=arm.features,
    )
    if run.source is None:
        return {**common, "steps": args.steps or steps, "lr": 1e-3, "lr_schedule": "cosine"}
    return {
        **common,
        "steps": args.finetune_steps or finetune,
        "lr": 1e-4,
        "lr_schedule": "constant",
        "init_from": str(args.out / run.source.name / "checkpoint.pt"),
    }


def cpu_settings(out: Path) -> argparse.Namespace:
    """The settings ``config_for`` reads, for the small preset on one CPU core: what the
    ablation scripts train with (their runs differ from the protocol's only where they say)."""
    return argparse.Namespace(scale="small", steps=None, finetune_steps=None, device="cpu",
                              threads=1, out=out)  # fmt: skip


def folder_done(folder: Path) -> bool:
    """The run in ``folder`` trained to the end, or stopped by a NaN/∞ (in diverged.json)."""
    return any((folder / done).exists() for done in ("metrics.json", "diverged.json"))


def divergence(folder: Path) -> str | None:
    """Why the run in ``folder`` stopped on a NaN/∞, or None if it did not."""
    path = folder / "diverged.json"
    return json.loads(path.read_text())["diverged"] if path.exists() else None


def train_to_end(values: dict) -> None:
    """Train the run ``values`` configures (its folder is ``values["out"]``) to its end.

    A finished run is skipped, a stopped one resumes from its last checkpoint, and a NaN/∞
    stop is recorded in diverged.json: a result (this setting does not train), not an error.
    """
    from moopt_lic import TrainConfig, TrainingDiverged, train

    folder = Path(values["out"])
    if folder_done(folder):
        return
    try:
        train(TrainConfig(**values, resume=(folder / "checkpoint.pt").exists()))
    except TrainingDiverged as error:
        (folder / "diverged.json").write_text(json.dumps({"diverged": str(error)}))


def finished(run: Run, args: argparse.Namespace) -> bool:
    """Done: trained to the end, or stopped by a NaN/∞ (recorded in diverged.json)."""
    return folder_done(args.out / run.name)


def diverged(run: Run, args: argparse.Namespace) -> str | None:
    return divergence(args.out / run.name)


def train_run(run: Run, args: argparse.Namespace) -> str:
    """Train, resume or skip one run (in a worker process); with ``--stage all``, evaluate it.

    Evaluating right after training spreads the (CPU-heavy) real coding over the session
    instead of leaving it all to the end.
    """
    train_to_end(config_for(run, args))
    if args.stage == "all" and to_evaluate(run, args):
        _load_eval_images(args.eval_images)
        evaluate_run(run.name, args)
    return run.name


def work(args: argparse.Namespace) -> None:
    """Run what is not finished, ``--jobs`` at a time, until done or out of time.

    Stopped early (time limit, SIGTERM, Ctrl-C), it stops its workers too: each resumes from
    its last checkpoint next time.
    """
    deadline = time.monotonic() + 60 * args.minutes
    evaluating = args.stage == "all"  # a worker also codes its run's checkpoint
    pending = [
        run
        for run in all_runs(args)
        if not finished(run, args) or (evaluating and to_evaluate(run, args))
    ]
    context = multiprocessing.get_context("spawn")
    active: dict[str, multiprocessing.process.BaseProcess] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("reproduce_rd: terminated"))
    try:
        while (pending or active) and time.monotonic() < deadline:
            for name, process in list(active.items()):
                if not process.is_alive():
                    process.join()
                    print(f"{name}: exit {process.exitcode}", flush=True)
                    del active[name]
            ready = [r for r in pending if r.source is None or finished(r.source, args)]
            while ready and len(active) < args.jobs:
                run = ready.pop(0)
                pending.remove(run)
                process = context.Process(target=train_run, args=(run, args), name=run.name)
                process.start()
                active[run.name] = process
                print(f"{run.name}: started", flush=True)
            if not ready and not active and pending:
                break  # fine-tunes wait for scratch runs that failed
            time.sleep(2)
    finally:
        for name, process in active.items():
            process.terminate()
            process.join()
            print(f"{name}: stopped, resumes from its checkpoint next time", flush=True)


_EVAL_IMAGES = None  # the evaluation photos, loaded once per evaluation worker


def _load_eval_images(count: int | None) -> None:
    global _EVAL_IMAGES
    from moopt_lic.data import ImageSet

    images = ImageSet.from_folder(DATA / "eval")
    _EVAL_IMAGES = images.split(len(images) - count, seed=0)[0] if count else images


def _evaluation_file(run_name: str, args: argparse.Namespace) -> Path:
    return args.out / run_name / "evaluation.json"


def evaluated(run_name: str, args: argparse.Namespace) -> bool:
    return _evaluation_file(run_name, args).exists()


def to_evaluate(run: Run, args: argparse.Namespace) -> bool:
    """Trained to the end (not diverged) and not evaluated yet."""
    return finished(run, args) and not diverged(run, args) and not evaluated(run.name, args)


def evaluate_run(run_name: str, args: argparse.Namespace) -> dict:
    """Real coding of one run's final checkpoint on the evaluation photos (in a worker).

    The result is written to the run's ``evaluation.json`` (its bpp and PSNR are means over
    the photos) and returned.
    """
    import torch

    from moopt_lic.evaluate import evaluate_checkpoint, summarize

    torch.set_num_threads(args.threads)
    device = torch.device(args.eval_device)
    rows = evaluate_checkpoint(args.out / run_name / "checkpoint.pt", _EVAL_IMAGES, device)
    means, worst = summarize(rows)
    metrics = json.loads((args.out / run_name / "metrics.json").read_text())
    result = {
        "bpp": means["bpp"],
        "psnr": means["psnr-rgb"],
        "max_decode_mismatch": worst.decode_mismatch,
        "train_seconds": metrics["train_seconds"],
        "effective_lambda": metrics["effective_lambda"],
        "eval_device": args.eval_device,
        "eval_images": len(rows),
    }
    _evaluation_file(run_name, args).write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"evaluated {run_name}: bpp {result['bpp']:.4f}, PSNR {result['psnr']:.2f}", flush=True)
    return result


def evaluate_all(args: argparse.Namespace) -> None:
    """Evaluate every finished run not evaluated yet, ``--eval-jobs`` at a time."""
    from concurrent.futures import ProcessPoolExecutor

    todo = [run.name for run in all_runs(args) if to_evaluate(run, args)]
    if todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.eval_jobs, mp_context=context, initializer=_load_eval_images,
                                 initargs=(args.eval_images,)) as pool:  # fmt: skip
            list(pool.map(evaluate_run, todo, [args] * len(todo)))


def curve(results: dict[str, dict], arm: str, seed: int, lambdas) -> tuple[list, list]:
    points = [results[Run(arm, lmbda, seed).name] for lmbda in lambdas
              if Run(arm, lmbda, seed).name in results]  # fmt: skip
    points.sort(key=lambda p: p["bpp"])
    return [p["bpp"] for p in points], [p["psnr"] for p in points]


def bd(results: dict[str, dict], anchor: tuple, test: tuple) -> tuple[str, float | None]:
    """``test`` vs ``anchor`` ((arm, seed, λs) each): the table cells (BD-rate pchip, cubic,
    stable; or why it is undefined) and the pchip BD-rate (None if undefined).

    A curve that is not monotonic is compared by its Pareto front (its dominated points left
    out, the cell says how many) if four points remain.
    """
    import numpy as np

    from moopt_lic.compare import Curve, compare
    from moopt_lic.errors import InputError

    curves = []
    for arm, seed, lambdas in (anchor, test):
        bpp, psnr = curve(results, arm, seed, lambdas)
        if not bpp:
            return f"not run yet ({arm} seed {seed}) | | ", None
        if len(bpp) < 4:
            return f"undefined: {arm} seed {seed} has {len(bpp)} points | | ", None
        curves.append(Curve(f"{arm}/s{seed}", np.array(bpp), np.array(psnr)))
    try:
        c = compare(*curves)
    except InputError as strict:
        try:  # a curve that is not monotonic: its Pareto front, saying so
            c = compare(*curves, pareto_front=True)
        except InputError as front:
            return f"undefined: {strict} ({front}) | | ", None
    stable = "no (pchip and cubic disagree)" if c.unstable else "yes"
    if any(c.dropped):
        stable += f"; Pareto fronts (dominated points left out: {c.dropped[0]}, {c.dropped[1]})"
    cells = f"{c.bd_rate['pchip']:+.2f} % | {c.bd_rate['cubic']:+.2f} % | {stable}"
    return cells, c.bd_rate["pchip"]


def evaluated_results(args: argparse.Namespace) -> dict[str, dict]:
    """The evaluation of every run that has one, by run name."""
    return {run.name: json.loads(_evaluation_file(run.name, args).read_text())
            for run in all_runs(args) if evaluated(run.name, args)}  # fmt: skip


def report(args: argparse.Namespace) -> str:
    """The tables (BD-rates, noise floor, λ → operating point, times) of what is evaluated."""
    results = evaluated_results(args)
    lines = ["| comparison | seed | BD-rate pchip | BD-rate cubic | stable |",
             "|---|---|---|---|---|"]  # fmt: skip
    summary: dict[str, list[float]] = {}
    comparisons = [c for c in COMPARISONS if c[2] in args.arms]
    for label, anchor, test in comparisons:
        for seed in SEEDS:
            cells, pchip = bd(results, (anchor, seed, lambdas_of(anchor)),
                              (test, seed, lambdas_of(test)))  # fmt: skip
            lines.append(f"| {label} | {seed} | {cells} |")
            if pchip is not None:
                summary.setdefault(label, []).append(pchip)
    for lambdas, which in ((LAMBDAS, "grid λ"), (lambdas_of("A"), "all λ")):
        noise, _ = bd(results, ("A", SEEDS[0], lambdas), ("A", SEEDS[1], lambdas))
        lines.append(f"| A seed 1 vs A seed 0 (noise floor, {which}) | – | {noise} |")
    for label, values in summary.items():
        if len(values) > 1:
            lines.append(
                f"| {label}: mean ± std over seeds | – | {statistics.fmean(values):+.2f} ± "
                f"{statistics.stdev(values):.2f} % | | |"
            )
    lines += ["", "| run | bpp | PSNR (dB) | effective λ | train s |", "|---|---|---|---|---|"]
    times: dict[str, list[float]] = {}
    for run in all_runs(args):
        if (message := diverged(run, args)) is not None:
            lines.append(f"| {run.name} | diverged: {message.split(':')[0]} | | | |")
        elif run.name in results:
            r = results[run.name]
            times.setdefault(run.arm, []).append(r["train_seconds"])
            lines.append(f"| {run.name} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
                         f"{r['effective_lambda']:.3g} | {r['train_seconds']:.0f} |")  # fmt: skip
    lines.append("")
    from moopt_lic.evaluate import DEFAULT_TOLERANCE

    broken = [name for name, r in results.items()
              if not r.get("max_decode_mismatch", 0.0) <= DEFAULT_TOLERANCE]  # fmt: skip
    lines.append(f"decode check: {len(results) - len(broken)} of {len(results)} evaluated runs "
                 f"decode to their forward reconstruction within {DEFAULT_TOLERANCE}"
                 + (f"; NOT: {', '.join(broken)}" if broken else ""))  # fmt: skip
    for _label, anchor, test in comparisons:
        if times.get(test) and times.get(anchor):
            ratio = statistics.fmean(times[test]) / statistics.fmean(times[anchor])
            lines.append(f"wall-time ratio {test}/{anchor}: {ratio:.2f}")
    plots(args, results)
    done = sum(finished(run, args) for run in all_runs(args))
    header = (f"{done} of {len(all_runs(args))} runs finished (scale {args.scale}, trained on "
              f"{args.label})\n\n")  # fmt: skip
    return header + "\n".join(lines)


def plots(args: argparse.Namespace, results: dict[str, dict]) -> None:
    """The R-D curves per seed, and validation PSNR against step for the scratch runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"A": "C0", "B": "C1", "B'": "C2", "A+": "C3", "C": "C4", "E": "C5"}
    markers = {"A": "o", "B": "s", "B'": "D", "A+": "^", "C": "v", "E": "x"}
    lines = {SEEDS[0]: "-", SEEDS[1]: ":"}
    for seed in SEEDS:
        for arm in ARMS:
            bpp, psnr = curve(results, arm, seed, lambdas_of(arm))
            if bpp:
                axes[0].plot(bpp, psnr, lines[seed], marker=markers[arm], color=colors[arm],
                             label=f"{arm} seed {seed}", alpha=0.8)  # fmt: skip
        for arm in ("A", "B", "B'"):
            for lmbda in lambdas_of(arm):
                folder = args.out / Run(arm, lmbda, seed).name / "tensorboard"
                if not folder.exists():
                    continue
                events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
                events.Reload()
                if "val/psnr" in events.Tags()["scalars"]:
                    points = events.Scalars("val/psnr")
                    axes[1].plot([p.step for p in points], [p.value for p in points],
                                 lines[seed], color=colors[arm], alpha=0.5)  # fmt: skip
    axes[0].set(xlabel="rate (bpp), real coding", ylabel="PSNR (dB)",
                title="R-D on the eval photos (seed 0 solid, seed 1 dotted)")  # fmt: skip
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="step", ylabel="validation PSNR (dB)",
                title="training from scratch: A blue, B orange"
                + (", B′ green" if "B'" in args.arms else "") + " (every λ)")  # fmt: skip
    for ax in axes:
        ax.grid(True, alpha=0.3)
    figure.tight_layout()
    images = ROOT / "docs" / "images"  # the docs page shows it
    images.mkdir(parents=True, exist_ok=True)
    figure.savefig(images / f"{results_stem(args)}.png", dpi=110)
    plt.close(figure)


def results_stem(args: argparse.Namespace) -> str:
    """``benchmarks/results/<stem>.md/.png``: the scale and where it was trained."""
    return f"reproduce_rd_{args.scale}_{args.label}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="small", choices=sorted(SCALES))
    parser.add_argument("--steps", type=int, help="override the scale's steps from scratch")
    parser.add_argument("--finetune-steps", type=int, help="override the scale's F")
    parser.add_argument("--minutes", type=float, default=85, help="time for this invocation")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce_rd")
    parser.add_argument("--stage", default="all", choices=("all", "train", "evaluate", "report"),
                        help="all: train (each worker then codes its run), code what is left, "
                             "report; train: only train; evaluate: only code the finished runs; "
                             "report: the tables and plots of what is coded")  # fmt: skip
    parser.add_argument("--eval-device", default="cpu", help="device of the real coding")
    parser.add_argument("--eval-jobs", type=int, default=2, help="checkpoints coded at once")
    parser.add_argument("--label", help="names the results files (default: the device type)")
    parser.add_argument("--eval-images", type=int, help="code only this many eval photos (smoke)")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=DEFAULT_ARMS,
        choices=sorted(ARMS),
        help="the arms to train and report (A is needed by all, A+ by C and E)",
    )
    args = parser.parse_args()
    args.label = args.label or args.device.split(":")[0]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "train"):
        work(args)
    if args.stage in ("all", "evaluate"):
        evaluate_all(args)
    if args.stage in ("train", "evaluate"):
        return
    text = report(args)
    print(text)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{results_stem(args)}.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
