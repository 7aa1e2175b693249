"""Per-step overhead of the balancers through moopt.pytorch, as ratios to a plain step.

One step = forward + backward (+ the coarse-to-fine re-evaluation), the optimizer excluded,
on CompressAI ``mbt2018_mean(quality=1)`` with a batch of 8 random 128×128 crops of
``../shared/data/train``. The plain step is ``(R + λD).backward()``. All variants run
interleaved in one process (round-robin, the order rotating every round) so that machine
noise hits them alike; the table gives the median and the fastest step of each, as ratios to
the plain step's median and fastest. Peak memory is measured in a separate process per
variant, over the steps only, above what is resident before them (on CPU the peak RSS since
a reset of /proc/self/clear_refs minus the RSS then; on CUDA ``max_memory_allocated``).

    python benchmarks/step_overhead.py                    # CPU, 2 threads, 15 timed rounds
                                                          # (every balancer of the registry)
    python benchmarks/step_overhead.py --device cuda --rounds 30
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from compressai.zoo import mbt2018_mean
from PIL import Image

from moopt import (
    Balancer,
    CoarseToFineBalancer,
    EqQPBalancer,
    MGDABalancer,
    WeightedSumBalancer,
)
from moopt.pytorch import balanced_backward, update_balancer
from moopt_lic.balancers import BALANCERS

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MOOPT_DATA", ROOT.parent / "shared" / "data"))
LAMBDA = 0.0018  # CompressAI's λ for quality 1 (MSE)


@dataclass(frozen=True)
class Variant:
    """One row of the table: how the backward pass is done."""

    label: str
    balancer: Callable[[], Balancer] | None  # None: the plain (R + λD).backward() step
    gram_mode: str = "sequential"
    features: bool = False
    reevaluate_every: int | None = None


VARIANTS = [
    Variant("plain (R + λD).backward()", None),
    Variant("weighted sum (glue)", lambda: WeightedSumBalancer([1.0, 1.0])),
    Variant(
        "coarse-to-fine, re-evaluate every step",
        lambda: CoarseToFineBalancer(2),
        reevaluate_every=1,
    ),
    Variant(
        "coarse-to-fine, re-evaluate every 4 steps",
        lambda: CoarseToFineBalancer(2),
        reevaluate_every=4,
    ),
    Variant("MGDA exact, sequential", MGDABalancer),
    Variant("MGDA exact, batched", MGDABalancer, gram_mode="batched"),
    Variant("EqQP exact, sequential", EqQPBalancer),
    Variant("EqQP exact, batched", EqQPBalancer, gram_mode="batched"),
    Variant("EqQP features (latent y)", EqQPBalancer, features=True),
]


def _with_defaults(cls: type[Balancer]) -> Callable[[], Balancer]:
    """A balancer of the trainer's registry with its defaults, for rate and distortion."""
    takes_k = "num_objectives" in inspect.signature(cls).parameters
    return lambda: cls(num_objectives=2) if takes_k else cls()  # type: ignore[call-arg]


#: The other methods of the registry: Gram-based ones with k sequential passes.
VARIANTS += [
    Variant(
        f"{name}{', sequential' if choice.cls.requires_gram else ''}", _with_defaults(choice.cls)
    )
    for name, choice in BALANCERS.items()
    if name not in ("weighted-sum", "mgda", "eq-qp", "coarse-to-fine")
]


def load_batch(batch: int, patch: int, seed: int) -> torch.Tensor:
    """``batch`` random ``patch``×``patch`` RGB crops in [0, 1] from the training photos."""
    files = sorted((DATA / "train").glob("*.png"))
    if not files:
        raise SystemExit(f"no training photos in {DATA / 'train'} (set MOOPT_DATA)")
    rng = random.Random(seed)
    crops = []
    for path in rng.sample(files, batch):
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        top = rng.randrange(image.shape[0] - patch + 1)
        left = rng.randrange(image.shape[1] - patch + 1)
        crops.append(image[top : top + patch, left : left + patch])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


@dataclass
class Bench:
    """The model, the batch and the per-variant balancer state."""

    device: torch.device
    batch: int
    patch: int
    model: torch.nn.Module = field(init=False)
    x: torch.Tensor = field(init=False)
    params: list[torch.nn.Parameter] = field(init=False)
    latent: list[torch.Tensor] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        torch.manual_seed(0)
        self.model = mbt2018_mean(quality=1, pretrained=False).to(self.device).train()
        self.x = load_batch(self.batch, self.patch, seed=0).to(self.device)
        # the entropy bottleneck's quantiles belong to the auxiliary loss, not to R or D
        self.params = [p for n, p in self.model.named_parameters() if not n.endswith("quantiles")]
        self.model.g_a.register_forward_hook(lambda _m, _i, out: self.latent.append(out))

    def losses(self) -> dict[str, torch.Tensor]:
        self.latent.clear()
        out = self.model(self.x)
        pixels = self.x.shape[0] * self.x.shape[2] * self.x.shape[3]
        rate = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values()) / pixels
        distortion = LAMBDA * 255**2 * torch.mean((out["x_hat"] - self.x) ** 2)
        return {"rate": rate, "distortion": distortion}

    def step(self, variant: Variant, balancer: Balancer | None, index: int) -> float:
        """Run one step of ``variant`` and return its wall time in seconds."""
        self.model.zero_grad(set_to_none=True)
        self.synchronize()
        start = time.perf_counter()
        losses = self.losses()
        if balancer is None:
            (losses["rate"] + losses["distortion"]).backward()
        else:
            balanced_backward(
                losses,
                balancer,
                self.params,
                features=self.latent[-1] if variant.features else None,
                gram_mode=variant.gram_mode,  # type: ignore[arg-type]
            )
            if variant.reevaluate_every:
                update_balancer(balancer, self.losses, step=index, every=variant.reevaluate_every)
        self.synchronize()
        return time.perf_counter() - start

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def measure_times(args: argparse.Namespace) -> dict[str, list[float]]:
    """Interleaved timing of every variant; returns the per-step times after warm-up."""
    bench = Bench(torch.device(args.device), args.batch, args.patch)
    balancers = {v.label: (v.balancer() if v.balancer else None) for v in VARIANTS}
    times: dict[str, list[float]] = {v.label: [] for v in VARIANTS}
    for round_index in range(args.warmup + args.rounds):
        shift = round_index % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            elapsed = bench.step(variant, balancers[variant.label], round_index)
            if round_index >= args.warmup:
                times[variant.label].append(elapsed)
        print(f"round {round_index + 1}/{args.warmup + args.rounds}", file=sys.stderr, flush=True)
    return times


def measure_memory(args: argparse.Namespace, label: str) -> float:
    """Peak memory (MiB) of a few steps of one variant above the resident model, in this process.

    On CUDA: ``max_memory_allocated`` over the steps; on CPU: the peak RSS over the steps
    minus the RSS before them (the model, the batch and the libraries).
    """
    bench = Bench(torch.device(args.device), args.batch, args.patch)
    variant = next(v for v in VARIANTS if v.label == label)
    balancer = variant.balancer() if variant.balancer else None
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        # start the peak-RSS count here: model construction and image decoding can peak
        # higher than a step and would hide the differences between variants
        Path("/proc/self/clear_refs").write_text("5")
    baseline = _proc_status_mib("VmRSS")
    for index in range(3):
        bench.step(variant, balancer, index)
    if bench.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mib("VmHWM") - baseline


def _proc_status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` in MiB (``VmHWM``: peak RSS since the reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10
    raise RuntimeError(f"no {field} in /proc/self/status: peak memory needs Linux")


def table(times: dict[str, list[float]], memory: dict[str, float], args: argparse.Namespace) -> str:
    base = times[VARIANTS[0].label]
    base_median, base_min = statistics.median(base), min(base)
    rows = [
        f"Device: {args.device} ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"batch {args.batch} × {args.patch}²; {args.rounds} timed rounds after {args.warmup} "
        f"warm-up rounds; plain step median {base_median * 1e3:.0f} ms.",
        "",
        "| variant | median ratio | fastest ratio | median ms | step peak memory MiB |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        t = times[variant.label]
        peak = memory.get(variant.label, math.nan)
        rows.append(
            f"| {variant.label} | {statistics.median(t) / base_median:.3f}× "
            f"| {min(t) / base_min:.3f}× | {statistics.median(t) * 1e3:.0f} | {peak:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (≥ 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the table (.md) and raw times (.json)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_of:  # child process: one variant's peak memory
        print(json.dumps(measure_memory(args, args.memory_of)))
        return

    times = measure_times(args)
    memory = {}
    for variant in VARIANTS:
        child = [sys.executable, __file__, "--memory-of", variant.label]
        child += ["--device", args.device, "--threads", str(args.threads)]
        child += ["--batch", str(args.batch), "--patch", str(args.patch)]
        result = subprocess.run(child, capture_output=True, text=True, check=True)
        memory[variant.label] = json.loads(result.stdout.strip().splitlines()[-1])
    report = table(times, memory, args)
    print(report)
    if args.out:
        args.out.with_suffix(".md").write_text(report + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"times": times, "memory_mib": memory}))


if __name__ == "__main__":
    main()
