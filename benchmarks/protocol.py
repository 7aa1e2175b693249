"""What the benchmarks share: paths, the λ grid, runs and arms, training a run to its end,
coding it for real, running many runs in worker processes, and comparing curves.

The scripts beside this module import it by name (``from protocol import ...``): Python puts
a script's own folder first on the import path, and spawned worker processes inherit it.
The tests import it the same way (``pythonpath`` in ``pyproject.toml``).

A run lives in its own folder and is the unit of resumption: ``metrics.json`` in it means
trained to the end, ``diverged.json`` means stopped by a NaN/∞ (a result: this setting does
not train), ``checkpoint.pt`` alone means stopped early (it resumes), ``evaluation.json``
holds its real-coded bpp and PSNR on the evaluation photos.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MOOPT_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "images"

#: CompressAI's MSE λ for its zoo qualities 3–6.
LAMBDA_GRID = (0.0035, 0.0067, 0.013, 0.025)
#: Training photos held out for validation (the PSNR-against-step curves, any choice).
HOLDOUT = 4
#: The paper's fine-tuning recipe: Adam at a small constant learning rate.
FINETUNE_LR = 5e-5


@dataclass(frozen=True)
class Arm:
    """How an arm trains: its balancer and settings, and the arm whose checkpoint it starts
    from (``None``: from scratch)."""

    balancer: str
    start_from: str | None = None
    features: bool = False
    loss_floor: float | None = None
    options: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields the arm sets."""
        values: dict[str, Any] = {"balancer": self.balancer, "features": self.features}
        if self.loss_floor is not None:
            values["loss_floor"] = self.loss_floor
        if self.options:
            values["balancer_option"] = list(self.options)
        return values


@dataclass(frozen=True)
class Run:
    """One training run: an arm at one operating point and seed.

    ``point`` is a λ (``unit="l"``) or a rate target in bpp (``unit="t"``); the folder name
    spells both, e.g. ``Aplus-l0.0035-s1`` or ``eq-qp-t0.3-s0``.
    """

    arm: str
    point: float
    seed: int
    unit: str = "l"

    @property
    def name(self) -> str:
        slug = self.arm.replace("+", "plus").replace("'", "p")
        return f"{slug}-{self.unit}{self.point}-s{self.seed}"

    def source(self, arms: Mapping[str, Arm]) -> Run | None:
        """The run whose checkpoint this one fine-tunes: same point and seed."""
        start = arms[self.arm].start_from
        return None if start is None else replace(self, arm=start)


def folder_done(folder: Path) -> bool:
    """The run in ``folder`` trained to the end, or stopped by a NaN/∞."""
    return any((folder / done).exists() for done in ("metrics.json", "diverged.json"))


def divergence(folder: Path) -> str | None:
    """Why the run in ``folder`` stopped on a NaN/∞, or None if it did not."""
    path = folder / "diverged.json"
    return json.loads(path.read_text())["diverged"] if path.exists() else None


#: Settings that say where and how a run executes (paths, device, threads), not what it
#: trains: a finished run moved to another folder or machine is still the same run.
EXECUTION_SETTINGS = frozenset(
    {"out", "dataset", "eval_dataset", "init_from", "device", "threads", "workers", "progress",
     "final_eval", "resume"}
)  # fmt: skip


def trained_otherwise(folder: Path, values: Mapping[str, Any]) -> list[str]:
    """The settings of ``values`` that the finished run in ``folder`` was trained with
    differently, as ``name: was → now`` ([] if none, or if it has not finished)."""
    trained = (run_metrics(folder) or {}).get("config")
    if trained is None:
        return []
    return [f"{name}: {trained.get(name)!r} → {value!r}" for name, value in values.items()
            if name not in EXECUTION_SETTINGS and trained.get(name) != value]  # fmt: skip


def train_to_end(values: dict[str, Any]) -> None:
    """Train the run ``values`` configures (its folder is ``values["out"]``) to its end.

    A finished run is skipped, a stopped one resumes from its last checkpoint (the same
    configuration: resuming refuses a changed one), and a NaN/∞ stop is recorded in
    diverged.json. A run finished with other settings (a protocol constant changed since)
    is an error: its folder must go before it is trained again.
    """
    from moopt_lic import TrainConfig, TrainingDiverged, train
    from moopt_lic.checkpoint import atomic_write_text

    folder = Path(values["out"])
    if changed := trained_otherwise(folder, values):
        raise SystemExit(f"{folder} was trained with other settings ({'; '.join(changed)}); "
                         "delete the folder to train it as the protocol now says")  # fmt: skip
    if folder_done(folder):
        return
    try:
        train(TrainConfig(**values, resume=(folder / "checkpoint.pt").exists()))
    except TrainingDiverged as error:
        atomic_write_text(json.dumps({"diverged": str(error)}), folder / "diverged.json")


def scalar_histories(folder: Path, *tags: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of TensorBoard scalars of the run in ``folder``, by tag, from one read
    of its log ([] for a tag it does not have)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    # A resumed run logs again from its checkpoint's step; the reader drops the orphaned
    # later steps (what we want) and warns each time, which would drown a run's log.
    tensorboard_log = logging.getLogger("tensorboard")
    level = tensorboard_log.level
    tensorboard_log.setLevel(logging.ERROR)
    try:
        events.Reload()
    finally:
        tensorboard_log.setLevel(level)
    present = set(events.Tags()["scalars"])
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            if tag in present else [] for tag in tags}  # fmt: skip


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar of the run in ``folder``."""
    return scalar_histories(folder, tag)[tag]


def last_validation(folder: Path) -> tuple[float, float]:
    """(bpp, PSNR) of a run's last validation (held-out training photos), from its log."""
    histories = scalar_histories(folder, "val/bpp", "val/psnr")
    return histories["val/bpp"][-1][1], histories["val/psnr"][-1][1]


def eval_images(count: int | None = None) -> Any:
    """The evaluation photos (never used for a choice); ``count``: only the first few."""
    from moopt_lic.data import ImageSet

    images = ImageSet.from_folder(DATA / "eval")
    return images.split(len(images) - count, seed=0)[0] if count else images


def code_run(folder: Path, images: Any, device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """Real coding of the run's final checkpoint on ``images``, written to evaluation.json.

    The bpp and PSNR are means over the photos; the worst decode mismatch is kept so that
    a report can show every checkpoint decodes what its forward pass reconstructs.
    """
    import torch

    from moopt_lic.checkpoint import atomic_write_text
    from moopt_lic.evaluate import evaluate_checkpoint, summarize

    torch.set_num_threads(threads)
    rows = evaluate_checkpoint(folder / "checkpoint.pt", images, torch.device(device))
    means, worst = summarize(rows)
    metrics = run_metrics(folder)
    if metrics is None:
        raise FileNotFoundError(f"{folder}: not trained to its end (no metrics.json) to code")
    result = {
        "bpp": means["bpp"],
        "psnr": means["psnr-rgb"],
        "max_decode_mismatch": worst.decode_mismatch,
        "train_seconds": metrics["train_seconds"],
        "effective_lambda": metrics["effective_lambda"],
        "eval_device": device,
        "eval_images": len(rows),
    }
    # its presence says the run is coded: never a torn file
    atomic_write_text(json.dumps(result, indent=1, sort_keys=True), folder / "evaluation.json")
    return result


def run_metrics(folder: Path) -> dict[str, Any] | None:
    """The run's metrics.json (written when it trained to its end), or None before that."""
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def target_losses(folder: Path) -> list[float] | None:
    """The targeted objective's loss at each of the run's last steps that its checkpoint kept
    (at least the last tenth), from its last checkpoint (None without a checkpoint or a
    target); loaded safely, as any checkpoint."""
    from moopt_lic.checkpoint import load_safely

    path = folder / "checkpoint.pt"
    losses = load_safely(path).get("target_losses") if path.exists() else None
    return [float(loss) for loss in losses] if losses else None


def evaluation(folder: Path) -> dict[str, Any] | None:
    """The run's evaluation.json, or None if it is not coded yet."""
    path = folder / "evaluation.json"
    return json.loads(path.read_text()) if path.exists() else None


def to_code(folder: Path) -> bool:
    """Trained to the end, not diverged, and not coded yet."""
    return folder_done(folder) and divergence(folder) is None and evaluation(folder) is None


@dataclass
class Task:
    """One unit of work for [`run_tasks`]: ``work(*args)`` in a worker process, started once
    the task named ``after`` (if any) has ended."""

    name: str
    work: Callable[..., object]
    args: tuple[Any, ...] = ()
    after: str | None = None
    done: bool = field(default=False, compare=False)


def run_tasks(tasks: Sequence[Task], jobs: int, minutes: float | None = None) -> None:
    """Run ``tasks``, ``jobs`` at a time, each in a fresh spawned process, until all have
    ended or ``minutes`` have passed.

    A fresh process per task imports the code as it is when the task starts, and lets a
    stopped run leave nothing behind. Stopped early (time limit, SIGTERM, Ctrl-C), the
    running tasks are stopped too: a training run resumes from its last checkpoint next
    time. A task whose ``after`` did not end is not started.
    """
    deadline = math.inf if minutes is None else time.monotonic() + 60 * minutes
    ended = {task.name for task in tasks if task.done}
    pending = [task for task in tasks if not task.done]
    context = multiprocessing.get_context("spawn")
    active: dict[str, multiprocessing.process.BaseProcess] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("benchmark: terminated"))
    try:
        while (pending or active) and time.monotonic() < deadline:
            for name, process in list(active.items()):
                if not process.is_alive():
                    process.join()
                    print(f"{name}: exit {process.exitcode}", flush=True)
                    if process.exitcode == 0:
                        ended.add(name)
                    del active[name]
            ready = [t for t in pending if t.after is None or t.after in ended]
            while ready and len(active) < jobs:
                task = ready.pop(0)
                pending.remove(task)
                process = context.Process(target=task.work, args=task.args, name=task.name)
                process.start()
                active[task.name] = process
                print(f"{task.name}: started", flush=True)
            if not ready and not active and pending:
                break  # what is left waits on tasks that failed
            time.sleep(2)
    finally:
        for name, process in active.items():
            process.terminate()
            process.join()
            print(f"{name}: stopped, resumes from its checkpoint next time", flush=True)


def psnr_at_rate(curve: Sequence[tuple[float, float]], bpp: float) -> float | None:
    """PSNR of a (bpp, PSNR) curve at ``bpp``, linear in log bpp between its two nearest
    points; None outside the curve's range (no extrapolation)."""
    points = sorted(curve)
    for (low_bpp, low_psnr), (high_bpp, high_psnr) in itertools.pairwise(points):
        if low_bpp <= bpp <= high_bpp and high_bpp > low_bpp:
            share = math.log(bpp / low_bpp) / math.log(high_bpp / low_bpp)
            return low_psnr + share * (high_psnr - low_psnr)
    return None


def equal_rate_difference(
    test: Sequence[tuple[float, float]], control: Sequence[tuple[float, float]]
) -> tuple[float, int]:
    """Mean PSNR difference of ``test``'s points to the ``control`` curve at their rates,
    and how many points fall inside the control's range (NaN, 0 if none)."""
    differences = [
        psnr - reference
        for bpp, psnr in test
        if (reference := psnr_at_rate(control, bpp)) is not None
    ]
    return (statistics.mean(differences) if differences else math.nan), len(differences)


@dataclass(frozen=True)
class BDRate:
    """One curve's BD-rate against another's (%; negative = a rate saving), or why there is
    none: ``pchip`` is None exactly when ``undefined`` says why."""

    pchip: float | None
    cubic: float | None = None
    #: "yes", or how the estimate is fragile (pchip and cubic disagree; Pareto fronts used).
    stability: str = ""
    undefined: str | None = None

    @property
    def cells(self) -> str:
        """Three table cells: pchip, cubic, stable (or the reason, then two empty cells)."""
        if self.pchip is None or self.cubic is None:
            return f"{self.undefined} | | "
        return f"{self.pchip:+.2f} % | {self.cubic:+.2f} % | {self.stability}"


def bd_rate(
    anchor: tuple[str, Sequence[tuple[float, float]]],
    test: tuple[str, Sequence[tuple[float, float]]],
) -> BDRate:
    """BD-rate of ``test`` against ``anchor`` ((label, points) each).

    A curve that is not monotonic is compared by its Pareto front (its dominated points left
    out, the stability says how many) if four points remain.
    """
    import numpy as np

    from moopt_lic.compare import Curve, compare
    from moopt_lic.errors import InputError

    curves = []
    for label, points in (anchor, test):
        if not points:
            return BDRate(None, undefined=f"not run yet ({label})")
        if len(points) < 4:
            return BDRate(None, undefined=f"undefined: {label} has {len(points)} points")
        bpp, psnr = zip(*sorted(points), strict=True)
        curves.append(Curve(label, np.array(bpp), np.array(psnr)))
    try:
        c = compare(*curves)
    except InputError:
        try:
            c = compare(*curves, pareto_front=True)
        except InputError as front:  # the reason left once dominated points are dropped
            return BDRate(None, undefined=f"undefined: {front}")
    stability = "no (pchip and cubic disagree)" if c.unstable else "yes"
    if any(c.dropped):
        stability += f"; Pareto fronts (dominated points left out: {c.dropped[0]}, {c.dropped[1]})"
    return BDRate(c.bd_rate["pchip"], c.bd_rate["cubic"], stability)


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± std`` of the values (std over ≥ 2 of them) to ``digits`` decimals, or – for
    none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:+.{digits}f}"
    return f"{statistics.fmean(values):+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def decode_check(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: how many coded runs (``evaluation.json`` by run name) decode to their
    forward pass's reconstruction within the evaluation's tolerance, naming those that do
    not (a codec whose bitstream decodes to something else has no coded rate worth
    comparing)."""
    from moopt_lic.evaluate import DEFAULT_TOLERANCE

    broken = [name for name, result in results.items()
              if not result.get("max_decode_mismatch", 0.0) <= DEFAULT_TOLERANCE]  # fmt: skip
    return (f"decode check: {len(results) - len(broken)} of {len(results)} evaluated runs "
            f"decode to their forward reconstruction within {DEFAULT_TOLERANCE}"
            + (f"; NOT: {', '.join(broken)}" if broken else ""))  # fmt: skip


def write_results(stem: str, text: str, command: str) -> Path:
    """``benchmarks/results/<stem>.md``: the command that made it, then ``text``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stem}.md"
    path.write_text(f"Command: `{command}`\n\n{text}\n")
    return path
