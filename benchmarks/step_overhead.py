"""Per-step overhead of the balancers through moopt.pytorch, as ratios to a plain step.

One step = forward + backward (+ the coarse-to-fine re-evaluation), the optimizer excluded,
on CompressAI's ``mbt2018-mean`` (by default at quality 1's size, N = 128, M = 192; ``--N`` and
``--M`` pick another, as ``moopt_lic.train`` builds it) with a batch of 8 random 128×128
crops of ``../shared/data/train``. The plain step is ``(R + λD).backward()``. All variants run
interleaved in one process (round-robin, the order rotating every round) so that machine
noise hits them alike; the table gives the median and the fastest step of each, as ratios to
the plain step's median and fastest. Peak memory is measured in a separate process per
variant, over the steps only, above what is resident before them (on CPU the peak RSS since
a reset of /proc/self/clear_refs minus the RSS then; on CUDA ``max_memory_allocated``).

    python benchmarks/step_overhead.py                    # CPU, 2 threads, 15 timed rounds
                                                          # (every balancer of the registry)
    python benchmarks/step_overhead.py --device cuda --rounds 30
    # the converged benchmark's codec, as its runs train (one thread each, 4 × 128²)
    python benchmarks/step_overhead.py --N 16 --M 24 --batch 4 --threads 1 --rounds 40 \
        --out benchmarks/results/step_overhead_protocol_cpu

The JSON written beside the table holds the raw times, the peak memory and the settings.
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
from moopt_lic.models import ModelSpec, build_model

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
    spec: ModelSpec
    model: torch.nn.Module = field(init=False)
    x: torch.Tensor = field(init=False)
    params: list[torch.nn.Parameter] = field(init=False)
    latent: list[torch.Tensor] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        torch.manual_seed(0)
        self.model = build_model(self.spec).to(self.device).train()
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


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The codec timed: ``mbt2018-mean`` at quality 1's size unless ``--N``/``--M`` say."""
    quality = 1 if args.N is None and args.M is None else None
    return ModelSpec("mbt2018-mean", quality=quality, N=args.N, M=args.M)


def settings(args: argparse.Namespace) -> dict[str, object]:
    """What the timing ran on, written beside the times (the converged report quotes it)."""
    spec = model_spec(args)
    n, m = spec.channels()
    return {
        "device": args.device,
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": spec.name,
        "N": n,
        "M": m,
        "batch": args.batch,
        "patch": args.patch,
        "rounds": args.rounds,
        "warmup": args.warmup,
    }


def measure_times(args: argparse.Namespace) -> dict[str, list[float]]:
    """Interleaved timing of every variant; returns the per-step times after warm-up."""
    bench = Bench(torch.device(args.device), args.batch, args.patch, model_spec(args))
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
    bench = Bench(torch.device(args.device), args.batch, args.patch, model_spec(args))
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
    ran = settings(args)
    rows = [
        f"Device: {ran['device']} ({ran['processor']}), {ran['threads']} "
        f"thread{'s' if ran['threads'] != 1 else ''}, torch "
        f"{ran['torch']}; {ran['model']} N = {ran['N']}, M = {ran['M']}; batch {ran['batch']} "
        f"× {ran['patch']}²; {ran['rounds']} timed rounds after {ran['warmup']} warm-up rounds; "
        f"plain step median {base_median * 1e3:.0f} ms.",
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
    parser.add_argument("--N", type=int, help="mbt2018-mean's N (default: quality 1's, 128)")
    parser.add_argument("--M", type=int, help="mbt2018-mean's M (default: quality 1's, 192)")
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
        child += [f"--{size}={value}" for size in ("N", "M") if (value := getattr(args, size))]
        result = subprocess.run(child, capture_output=True, text=True, check=True)
        memory[variant.label] = json.loads(result.stdout.strip().splitlines()[-1])
    report = table(times, memory, args)
    print(report)
    if args.out:
        args.out.with_suffix(".md").write_text(report + "\n")
        args.out.with_suffix(".json").write_text(
            json.dumps({"times": times, "memory_mib": memory, "settings": settings(args)})
        )


if __name__ == "__main__":
    main()
