"""The training loop of ``python -m moopt_lic.train``: one balanced R-D step at a time.

One step reads top to bottom ([`Trainer.train_step`][moopt_lic.trainer.Trainer.train_step]):

```text
x, noise seeds ──► model(x) ──► {rate, distortion}            (moopt_lic.objectives)
               ──► balanced_backward(losses, balancer, params) (moopt.pytorch)
               ──► clip, optimizer.step()
               ──► update_balancer(same batch, same noise)     (coarse-to-fine only)
               ──► aux_loss step of the entropy bottleneck     (never balanced)
```

Around the step, a [`Trainer`][moopt_lic.trainer.Trainer] sets the run up (its images and
per-step samples from [`moopt_lic.sampling`][moopt_lic.sampling], its learning-rate schedule
from [`moopt_lic.schedule`][moopt_lic.schedule]), loops over the steps, validates, writes
checkpoints, and finishes with real entropy coding of the evaluation images
([`code_images`][moopt_lic.codec.code_images]) and ``metrics.json``;
[`train`][moopt_lic.trainer.train] starts or resumes one.

Checkpoints hold everything the next step depends on (model, both optimizers, scheduler,
balancer, RNGs, step); the data and the noise are functions of ``(seed, sample number)``, so
a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from moopt import (
    Balancer,
    TargetBalancer,
)
from moopt.pytorch import BalancedStep, NonFiniteError, balanced_backward, update_balancer
from moopt_lic.amp import autocast
from moopt_lic.balancers import build_base_balancer
from moopt_lic.checkpoint import (
    FORMAT,
    atomic_save,
    atomic_write_text,
    capture_rng_state,
    plain,
    restore_rng_state,
)
from moopt_lic.codec import code_images, forward_padded, summarize
from moopt_lic.config import RUNTIME_FIELDS, TrainConfig, resume_conflicts, set_fields
from moopt_lic.data import CropDataset, image_to_tensor
from moopt_lic.devices import resolve_device, use_deterministic_cuda  # re-exported for scripts
from moopt_lic.distributed import Processes, agree, broadcast, fingerprint, setup, teardown
from moopt_lic.effective_lambda import (
    EFFECTIVE_LAMBDA_WINDOW,
    effective_lambda,
    lambda_offset,
    mean_effective_lambda,
)
from moopt_lic.errors import InputError
from moopt_lic.models import build_model, main_and_aux_parameters, read_checkpoint
from moopt_lic.noise import per_sample_noise
from moopt_lic.objectives import CodecBatch, mse_to_psnr, rd_objectives
from moopt_lic.sampling import StepBatches, check_msssim_sizes, training_and_validation_images
from moopt_lic.scalars import ScalarWriter
from moopt_lic.schedule import lr_factor
from moopt_lic.targets import Target, TargetHistory, achieved_steps, target_of

__all__ = [
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_balancer",
    "resume_state",
    "train",
    "train_with_flags",
]

CHECKPOINT = "checkpoint.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
METRICS = "metrics.json"
#: ``--amp fp16``: this many skipped (overflowing) steps in a row stop the run as diverged.
MAX_SKIPPED_IN_A_ROW = 30


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/∞; the message names the step and the objective."""


@dataclass
class TrainResult:
    """What [`train`][moopt_lic.trainer.train] returns: the output folder and the run summary."""

    out: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    #: True when ``resume`` found the run finished and trained nothing (metrics as saved).
    already_finished: bool = False


def build_balancer(config: TrainConfig) -> Balancer:
    """Build the balancer named by ``config.balancer``, wrapped to hold the run's target."""
    base = build_base_balancer(config)
    target = target_of(config.target_bpp, config.target_psnr, config.lmbda)
    return base if target is None else TargetBalancer(base, target.targets())


def _default_out(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model = config.model.replace(":", "-")  # a factory's package.module:factory
    return Path("runs") / f"{stamp}-{model}-{config.balancer}"


class Trainer:
    """A run: the model, its optimizers, the balancer, the data; steps and checkpoints.

    Use [`train`][moopt_lic.trainer.train]; the class is public for tests and for callers that drive
    steps themselves.
    """

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        resume_from: dict[str, Any] | None,
        processes: Processes | None = None,
        device: torch.device | None = None,
    ):
        self.config = config
        self.out = out
        self.processes = processes or Processes()
        self.device = device or resolve_device(config.device)
        if self.device.type == "cuda":
            use_deterministic_cuda()
        if config.threads:
            torch.set_num_threads(config.threads)
        train_images, self.eval_images = training_and_validation_images(config)
        if config.metric == "ms-ssim":
            check_msssim_sizes(self.eval_images)
        self.data = CropDataset(train_images, config.patch_size, config.seed)
        self.total_steps = config.total_steps(self.data.epoch_size, self.processes.world)
        self.spec = config.model_spec

        torch.manual_seed(config.seed)  # the initial weights depend on the seed alone
        # a resumed run names its factory (from the checkpoint), so it says which it calls
        announce = resume_from is not None and self.processes.is_main
        self.model = build_model(self.spec, announce=announce)
        self.model.to(self.device).train()
        if config.init_from and resume_from is None:
            self._load_initial_weights(config.init_from)
        self.distributed = self.processes.distributed
        self.main_params, aux_params = main_and_aux_parameters(self.model)
        self.optimizer = torch.optim.Adam(self.main_params, lr=config.lr)
        self.aux_optimizer = torch.optim.Adam(aux_params, lr=config.aux_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(config.lr_schedule, self.total_steps)
        )
        self.balancer = build_balancer(config)
        # float16 needs a loss scale; bfloat16 has float32's exponent range and does not
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        self.skipped_steps = 0  # of --amp fp16, over the run
        self._skipped_in_a_row = 0
        self.rate, self.distortion = rd_objectives(config.lmbda, config.metric)
        self._latent: list[torch.Tensor] = []
        if config.features:
            if not hasattr(self.model, "g_a"):
                raise InputError(f"--features needs a model with an encoder g_a; {config.model}")
            self.model.g_a.register_forward_hook(lambda _m, _i, y: self._latent.append(y))

        self.target: Target | None = target_of(config.target_bpp, config.target_psnr, config.lmbda)
        # the longest stretch read back: the run's achieved mean, a validation's standing
        # (the steps since the last one) and the progress bar's recent mean (the last log_every)
        window = max(achieved_steps(self.total_steps), config.eval_every, config.log_every)
        self.target_history = None if self.target is None else TargetHistory(self.target, window)
        self.step = 0
        # (w_R, w_D) of the last EFFECTIVE_LAMBDA_WINDOW steps
        self.recent_weights: list[list[float]] = []
        self.warned_lambda = False
        self.best: dict[str, float] | None = None
        self.elapsed = 0.0
        if resume_from is not None:
            self._restore(resume_from)

    # ----------------------------------------------------------------- one training step
    def losses(self, x: torch.Tensor, seeds: list[int]) -> dict[str, torch.Tensor]:
        """Rate and distortion of the model on ``x`` with the samples' own noise."""
        self._latent.clear()
        with per_sample_noise(seeds), autocast(self.device.type, self.config.amp):
            output = self.model(x)
            batch = CodecBatch(x, output)
            return {self.rate.name: self.rate(batch), self.distortion.name: self.distortion(batch)}

    def train_step(self, x: torch.Tensor, seeds: list[int]) -> BalancedStep:
        """One step: balanced backward, clip, optimizer, balancer update, aux step."""
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.losses(x, seeds)
        try:
            result = balanced_backward(
                losses,
                self.balancer,
                self.main_params,
                features=self._latent[-1] if config.features else None,
                gram_mode=config.gram_mode,
                distributed=self.distributed,
                grad_scaler=self.scaler,
            )
        except NonFiniteError as error:
            raise TrainingDiverged(f"step {self.step + 1}: {error}") from None
        except ValueError as error:  # the balancer refused its input, e.g. a loss ≤ its floor
            raise TrainingDiverged(f"step {self.step + 1}: the balancer stopped: {error}") from None
        if result.skipped:
            self._skip_step()
        else:
            self._skipped_in_a_row = 0
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip and check the true gradient
            norm = self._gradient_norm()
            if not math.isfinite(norm):
                raise TrainingDiverged(
                    f"step {self.step + 1}: the gradient of {self._blame_gradient(x, seeds)} is "
                    f"not finite (norm {norm})"
                )
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        try:
            update_balancer(
                self.balancer,
                lambda: self.losses(x, seeds),
                step=self.step,
                every=config.update_every,
                distributed=self.distributed,
                after=result,
            )
        except NonFiniteError as error:
            raise TrainingDiverged(f"step {self.step + 1} (re-evaluation): {error}") from None
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux_loss = self.model.aux_loss()  # type: ignore[operator]
        aux_loss.backward()
        self.aux_optimizer.step()
        with warnings.catch_warnings():  # a skipped fp16 step is no misuse of the scheduler
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        self.step += 1
        self.last_aux_loss = float(aux_loss.detach())
        if not result.skipped:
            self.recent_weights.append([float(w) for w in result.weights])
            del self.recent_weights[:-EFFECTIVE_LAMBDA_WINDOW]
        if self.target_history is not None:
            self.target_history.record(result.losses)
        return result

    def _skip_step(self) -> None:
        """``--amp fp16``: a gradient overflowed; the scaler skips the step and lowers the scale.

        The balancer was left as it was by the glue; too many in a row stop the run.
        """
        assert self.scaler is not None
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise TrainingDiverged(
                f"step {self.step + 1}: {self._skipped_in_a_row} float16 steps in a row had "
                f"non-finite gradients down to a loss scale of {self.scaler.get_scale():g}; "
                f"the run diverged, or float16 cannot hold its gradients (try --amp bf16)"
            )
        self.scaler.step(self.optimizer)  # .grad holds ∞: the optimizer step is skipped
        self.scaler.update()

    def _gradient_norm(self) -> float:
        if self.config.clip_max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.main_params, self.config.clip_max_norm)
        else:
            grads = [p.grad for p in self.main_params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        return float(norm)

    def _blame_gradient(self, x: torch.Tensor, seeds: list[int]) -> str:
        """Name the objective(s) whose own gradient is not finite (recomputed on the batch)."""
        culprits = []
        for name, loss in self.losses(x, seeds).items():
            grads = torch.autograd.grad(
                loss, self.main_params, retain_graph=True, allow_unused=True
            )
            if any(g is not None and not torch.isfinite(g).all() for g in grads):
                culprits.append(repr(name))
        return "objective " + " and ".join(culprits) if culprits else "the balanced loss"

    # ---------------------------------------------------------------------- the loop
    def batches(self) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """Yield this process's batches of the remaining steps, on the run's device.

        Each batch is the crops and noise seeds of the samples that
        [`StepBatches`][moopt_lic.sampling.StepBatches] gives this process for the step.
        """
        sampler = StepBatches(self.step, self.total_steps, self.config.batch_size, self.processes)
        loader = torch.utils.data.DataLoader(
            self.data, batch_sampler=sampler, num_workers=self.config.workers
        )
        for x, seeds in loader:
            yield x.to(self.device, non_blocking=True), [int(s) for s in seeds]

    def run(self) -> dict[str, Any]:
        """Train to the last step, validating and checkpointing, then evaluate; the summary."""
        config = self.config
        main = self.processes.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        writer = ScalarWriter(self.out / "tensorboard", self.step, enabled=main)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (config.progress and main),
            mininterval=0.1 if sys.stderr.isatty() else 15,  # few lines in logs and CI
            desc=f"{config.model} {config.balancer}",
            dynamic_ncols=True,
        )
        times: list[float] = []
        try:
            for x, seeds in self.batches():
                start = time.perf_counter()
                result = self.train_step(x, seeds)
                times.append(time.perf_counter() - start)
                self.elapsed += times[-1]
                bar.update(1)
                if self.step % config.log_every == 0 or self.step == self.total_steps:
                    scalars = self._step_scalars(result, times)
                    for name, value in scalars.items():
                        writer.add_scalar(name, value, self.step)
                    bar.set_postfix(
                        self._postfix(scalars),
                        refresh=False,  # shown at the bar's next refresh (mininterval)
                    )
                    times.clear()
                    if main:
                        self._warn_if_lambda_lost()
                if main and (self.step % config.eval_every == 0 or self.step == self.total_steps):
                    self._validate(writer)
                if self.step % config.checkpoint_every == 0 or self.step == self.total_steps:
                    self._check_processes_agree()
                    if main:
                        self.save(self.out / CHECKPOINT)
        finally:
            bar.close()
            writer.close()
        return self.finish() if main else {}

    def _postfix(self, scalars: dict[str, float]) -> dict[str, str]:
        """Return the progress bar's fields: rate, effective λ, the target and its recent mean."""
        postfix = {
            "bpp": f"{scalars['train/rate_bpp']:.3f}",
            "λ_eff": f"{scalars.get('balancer/effective_lambda', math.nan):.4g}",
        }
        if self.target is not None and self.target_history is not None:
            recent = self.target_history.mean_in_units(self.config.log_every)
            postfix["target"] = f"{self.target.value:g}{self.target.unit}"
            postfix["held"] = f"{recent:.3g}{self.target.unit}"
        return postfix

    def _warn_if_lambda_lost(self) -> None:
        """Warn once when, with no target, the balancer has left the user's λ for a while.

        "A while" is every one of the last ``EFFECTIVE_LAMBDA_WINDOW`` steps outside the
        tolerance that the end-of-run note uses too.
        """
        recent = self.recent_weights
        if (
            self.warned_lambda
            or self.target is not None
            or self.config.balancer == "weighted-sum"
            or len(recent) < EFFECTIVE_LAMBDA_WINDOW
        ):
            return
        lmbda = self.config.lmbda
        offsets = [lambda_offset(lmbda, effective_lambda(lmbda, np.array(w))) for w in recent]
        if any(offset is None for offset in offsets):
            return
        self.warned_lambda = True
        mean = lambda_offset(lmbda, mean_effective_lambda(lmbda, recent)) or offsets[-1]
        tqdm.write(
            f"warning: step {self.step}: under {self.config.balancer} the effective λ has been "
            f"{mean} for {EFFECTIVE_LAMBDA_WINDOW} steps, so the codec drifts away from the "
            f"rate a weighted sum at this λ would give; to hold a rate, pass --target-bpp B "
            f"(or --target-psnr P)",
            file=sys.stderr,
        )

    def _check_processes_agree(self) -> None:
        """Every process must hold the same parameters and balancer state (a collective)."""
        if not self.distributed:
            return
        print_state = fingerprint(self.model, self.balancer.state_dict(), self.step)
        if not agree(print_state, self.processes):
            raise RuntimeError(
                f"step {self.step}: the processes' parameters or balancer states differ; "
                f"data-parallel training lost its synchronisation"
            )

    def _step_scalars(self, result: BalancedStep, times: list[float]) -> dict[str, float]:
        rate, distortion = (float(v) for v in result.losses)
        scalars = {
            "train/rate_bpp": rate,
            "train/distortion": distortion,
            "train/loss": rate + distortion,
            "train/aux_loss": self.last_aux_loss,
            "time/step_seconds": float(np.mean(times)),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if not result.skipped:  # a skipped --amp fp16 step has no weights
            w_rate, w_distortion = (float(w) for w in result.weights)
            scalars["balancer/weight_rate"] = w_rate
            scalars["balancer/weight_distortion"] = w_distortion
            lmbda = effective_lambda(self.config.lmbda, result.weights)
            scalars["balancer/effective_lambda"] = lmbda
        if self.scaler is not None:
            scalars["amp/loss_scale"] = self.scaler.get_scale()
            scalars["amp/skipped_steps"] = float(self.skipped_steps)
        if isinstance(self.balancer, TargetBalancer):
            # one targeted objective: its control u (tilt exp(u), or preference) and log error
            scalars["target/control"] = float(self.balancer.control[0])
            scalars["target/log_error"] = float(self.balancer.error[0])
        if self.config.metric == "mse":
            scalars["train/psnr"] = mse_to_psnr(distortion / (self.config.lmbda * 255**2))
        return scalars

    # -------------------------------------------------------------------- validation
    @torch.no_grad()
    def _validate(self, writer: ScalarWriter) -> dict[str, float]:
        """Likelihood-estimated rate, PSNR and R-D loss on the evaluation images."""
        self.model.eval()
        totals: dict[str, list[float]] = {"bpp": [], "psnr": [], "loss": [], "distortion": []}
        for index in range(len(self.eval_images)):
            x = image_to_tensor(self.eval_images[index]).to(self.device)
            output = forward_padded(self.model, x, self.spec.downsampling)
            batch = CodecBatch(x, output)
            rate = float(self.rate(batch))  # bits of the padded image / original pixels
            distortion = float(self.distortion(batch))
            totals["bpp"].append(rate)
            totals["psnr"].append(mse_to_psnr(float(torch.mean((output["x_hat"] - x) ** 2))))
            totals["loss"].append(rate + distortion)
            totals["distortion"].append(distortion)
        self.model.train()
        summary = {name: float(np.mean(values)) for name, values in totals.items()}
        for name, value in summary.items():
            writer.add_scalar(f"val/{name}", value, self.step)
        candidate = {"step": self.step, **summary, **self._target_standing()}
        if self.best is None or _better(candidate, self.best, self.target):
            self.best = candidate
            self.save(self.out / BEST_CHECKPOINT)
        return summary

    def _target_standing(self) -> dict[str, float]:
        """Whether the steps since the last validation held the target, and how far off."""
        if self.target_history is None:
            return {}
        steps = self.config.eval_every
        return {
            "holds_target": float(self.target_history.holds_over(steps)),
            "target_error": self.target_history.error(steps),
        }

    # ------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """Return the checkpoint: ``"model"`` is the model's ``state_dict``; the rest resumes.

        Every value is a tensor or a plain Python value, so that the file loads with
        ``torch.load(..., weights_only=True)`` (the balancer's NumPy arrays become lists).
        """
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "model_spec": self.spec.to_dict(),
            "config": self.config.to_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "balancer": plain(self.balancer.state_dict()),
            "rng": capture_rng_state(),
            "best": plain(self.best),
            "elapsed": self.elapsed,
            "recent_weights": [[float(w) for w in step] for step in self.recent_weights],
            "target_losses": (
                None if self.target_history is None else list(self.target_history.losses)
            ),
            "warned_lambda": self.warned_lambda,
            "processes": self.processes.world,
            "scaler": {} if self.scaler is None else self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
        }

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically."""
        atomic_save(self.state(), path)

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint read by [`resume_state`][moopt_lic.trainer.resume_state]."""
        where = f"checkpoint {str(self.out / CHECKPOINT)!r}"
        parts = [
            ("model", self.model.load_state_dict),
            ("optimizer", self.optimizer.load_state_dict),
            ("aux_optimizer", self.aux_optimizer.load_state_dict),
            ("scheduler", self.scheduler.load_state_dict),
            ("balancer", self.balancer.load_state_dict),
            ("rng", restore_rng_state),
        ]
        if self.scaler is not None and state["scaler"]:
            parts.append(("scaler", self.scaler.load_state_dict))
        for key, load in parts:
            try:
                load(state[key])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
                raise InputError(f"{where}: its {key!r} does not fit this run: {first}") from None
        self.step = int(state["step"])
        self.best = state["best"]
        self.elapsed = float(state["elapsed"])
        self.recent_weights = [[float(w) for w in step] for step in state["recent_weights"]]
        self.warned_lambda = bool(state["warned_lambda"])
        self.skipped_steps = int(state["skipped_steps"])
        if self.target_history is not None:
            losses = state["target_losses"]
            if not isinstance(losses, list):
                raise InputError(f"{where}: its 'target_losses' is {losses!r}, not a list")
            self.target_history.restore(losses)

    def _load_initial_weights(self, path: str) -> None:
        checkpoint = read_checkpoint(path) if Path(path).is_file() else None
        if checkpoint is None:
            raise InputError(f"--init-from {path!r} does not exist")
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise InputError(f"--init-from {path!r} does not fit {self.spec}: {first}") from None

    # ---------------------------------------------------------------------- the end
    def finish(self) -> dict[str, Any]:
        """Evaluate with real entropy coding and write ``metrics.json``; the summary."""
        metrics: dict[str, Any] = {
            "out": str(self.out),
            "steps": self.step,
            "train_seconds": self.elapsed,
            "model": self.spec.to_dict(),
            "balancer": self.config.balancer,
            "processes": self.processes.world,
            "lambda": self.config.lmbda,
            "effective_lambda": mean_effective_lambda(self.config.lmbda, self.recent_weights),
            "balancer_state": plain(self.balancer.state_dict()),
            "best_validation": self.best,
            "config": self.config.to_dict(),
        }
        if self.target is not None and self.target_history is not None:
            metrics["target"] = {
                "objective": self.target.objective,
                "value": self.target.value,
                "achieved": self.target_history.achieved(self.total_steps),
            }
        if self.config.amp != "off":
            metrics["amp"] = {
                "mode": self.config.amp,
                "skipped_steps": self.skipped_steps,
                "loss_scale": None if self.scaler is None else self.scaler.get_scale(),
            }
        if self.config.final_eval:
            metrics["final_evaluation"] = self.evaluate_coded()
        # its presence says the run finished: never a torn file
        atomic_write_text(json.dumps(metrics, indent=2) + "\n", self.out / METRICS)
        return metrics

    @torch.no_grad()
    def evaluate_coded(self) -> dict[str, Any]:
        """Real ``compress``/``decompress`` of the evaluation images; means of per-image values."""
        # on the CPU, as CompressAI's eval_model does by default: on a GPU the encoder's and
        # the decoder's float rounding may differ, which corrupts autoregressive models
        model = copy.deepcopy(self.model).cpu().eval()
        model.update(force=True)  # type: ignore[operator]
        rows = code_images(model, self.eval_images, self.spec.downsampling, torch.device("cpu"))
        means, _ = summarize(rows)
        return {
            "bpp": means["bpp"],
            "psnr": means["psnr-rgb"],
            # NaN, not None, for an image too small for MS-SSIM: metrics.json's own convention
            "images": [
                {
                    "name": row.image,
                    "bpp": row.bpp,
                    "psnr": row.psnr,
                    "ms_ssim": math.nan if row.ms_ssim is None else row.ms_ssim,
                }
                for row in rows
            ],
        }


def _better(candidate: dict[str, float], best: dict[str, float], target: Target | None) -> bool:
    """Whether a validation beats the best so far, by the user's own criterion.

    Without a target: the lower validation ``R + D`` at the run's λ, whatever the balancer
    optimised. With one: among validations whose preceding steps held the target, the lower
    free objective (distortion under a rate target, rate under a quality target); before any
    held it, the one closest to the target.
    """
    if target is None:
        return candidate["loss"] < best["loss"]
    if candidate["holds_target"] != best["holds_target"]:
        return candidate["holds_target"] > best["holds_target"]
    if not candidate["holds_target"]:
        return candidate["target_error"] < best["target_error"]
    free = "distortion" if target.objective == "rate" else "bpp"
    return candidate[free] < best[free]


def train(config: TrainConfig) -> TrainResult:
    """Train a codec as ``config`` says; resume when ``config.resume`` is set.

    Parameters
    ----------
    config : TrainConfig
        The run. With ``resume=True`` the run saved in ``config.out`` continues with its
        saved configuration: the same ``config`` that started it continues it, and so does
        ``TrainConfig(out=..., resume=True)``. Only the runtime fields (``device``,
        ``progress``, ``workers``, ``dist_timeout``) are taken from ``config``; any other
        field set to something other than its default must equal the run's, or the call is
        refused (an [`InputError`][moopt_lic.InputError] listing them, nothing written). A
        finished run is not trained again (``already_finished`` in the result).

    Returns
    -------
    TrainResult
        The output folder and the summary also written to ``metrics.json``.

    Raises
    ------
    InputError
        For bad input (files, folders, values), before any training.
    TrainingDiverged
        If a loss or gradient becomes NaN/∞; ``checkpoint.pt`` keeps the last good state.
    """
    return train_with_flags(config, None)


def train_with_flags(config: TrainConfig, typed: dict[str, str] | None) -> TrainResult:
    """[`train`][moopt_lic.trainer.train], with the fields the caller set and how they were typed.

    ``typed`` maps field names to flags (``{"lmbda": "--lambda"}``, what the command line
    gave); None means the fields that differ from their defaults. On ``resume`` each must
    equal the run's.
    """
    config.validate()
    processes, device, joined = setup(resolve_device(config.device), config.dist_timeout)
    try:
        return _train(config, processes, device, set_fields(config) if typed is None else typed)
    finally:
        if joined:
            teardown()


#: What a resumable checkpoint holds besides ``model`` and ``model_spec``, and of which type.
RESUME_ENTRIES: dict[str, tuple[type, ...]] = {
    "config": (dict,),
    "step": (int,),
    "total_steps": (int,),
    "optimizer": (dict,),
    "aux_optimizer": (dict,),
    "scheduler": (dict,),
    "balancer": (dict,),
    "rng": (dict,),
    "elapsed": (int, float),
    "best": (dict, type(None)),
}
#: Entries added after the first checkpoint format, with the value a run without them had.
RESUME_DEFAULTS: dict[str, tuple[tuple[type, ...], Any]] = {
    "recent_weights": ((list,), []),
    "warned_lambda": ((bool,), False),
    "target_losses": ((list, type(None)), None),
    "processes": ((int,), 1),
    "scaler": ((dict,), {}),
    "skipped_steps": ((int,), 0),
}


def resume_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint to resume from: safely, every entry present and of its type.

    Raises
    ------
    InputError
        One line naming the file and what is wrong (see
        [`read_checkpoint`][moopt_lic.models.read_checkpoint]; also a missing or mistyped
        entry, or a configuration that is not a valid one).
    """
    state = read_checkpoint(path)
    where = f"checkpoint {str(path)!r}"
    missing = [key for key in RESUME_ENTRIES if key not in state]
    if missing:
        raise InputError(
            f"{where} cannot be resumed: it has no {', '.join(map(repr, missing))} (it holds "
            f"model weights only); start a new run from them with --init-from {str(path)!r}"
        )
    for key, (_, default) in RESUME_DEFAULTS.items():
        state.setdefault(key, default)
    for key, kinds in {**RESUME_ENTRIES, **{k: v[0] for k, v in RESUME_DEFAULTS.items()}}.items():
        value = state[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(kind.__name__ for kind in kinds)
            raise InputError(
                f"{where} is malformed: {key!r} is a {type(value).__name__}, not {names}"
            )
    try:
        state["config"] = TrainConfig.from_dict(state["config"])
    except InputError as error:
        raise InputError(f"{where} is malformed: {error}") from None
    return state


def _train(
    config: TrainConfig, processes: Processes, device: torch.device, typed: dict[str, str]
) -> TrainResult:
    if config.resume:
        if config.out is None:
            raise InputError("--resume needs --out: the folder of the run to continue")
        out = Path(config.out)
        if not (out / CHECKPOINT).exists():
            raise InputError(f"--resume: {str(out / CHECKPOINT)!r} does not exist")
        state = resume_state(out / CHECKPOINT)
        if state["processes"] != processes.world:
            raise InputError(
                f"--resume: the run in {str(out)!r} was trained by {state['processes']} "
                f"process(es), not {processes.world}; resume it with as many (torchrun "
                f"--nproc_per_node), or the data order would change"
            )
        conflicts = resume_conflicts(state["config"], config, typed)
        if conflicts:
            raise InputError(
                f"--resume continues the run in {str(out)!r} with its own settings, and "
                f"{', '.join(conflicts)} would change them; give the run's values (or leave "
                f"the flags out) to continue it, or start a new run from its weights: "
                f"--init-from {str(out / CHECKPOINT)!r} -o NEW_FOLDER"
            )
        saved = state["config"].to_dict()
        saved.update({name: getattr(config, name) for name in RUNTIME_FIELDS})
        config = TrainConfig.from_dict(saved)
        trainer = Trainer(config, out, state, processes, device)
        if trainer.step >= trainer.total_steps and (out / METRICS).exists():
            return TrainResult(out, json.loads((out / METRICS).read_text()), already_finished=True)
        return TrainResult(out, trainer.run())
    out = Path(broadcast(config.out or str(_default_out(config)), processes))
    if (out / CHECKPOINT).exists():
        raise InputError(
            f"--out {str(out)!r} already holds a run; pass --resume to continue it, or choose "
            f"another --out"
        )
    config.out = str(out)
    return TrainResult(out, Trainer(config, out, None, processes, device).run())
