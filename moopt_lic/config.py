"""The configuration of a training run, and the command line generated from it.

[`TrainConfig`][moopt_lic.TrainConfig] is the single source of truth: ``python -m moopt_lic.train``
builds its argument parser from the dataclass fields (flag, help, choices), so the CLI and the
Python API cannot drift apart. Its defaults are the built-in demo run (a small codec, a few minutes
on two CPU cores); real training sets ``--dataset``, ``--quality``, ``--patch-size 256``,
``--batch-size 16`` and many more steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Union, get_args, get_origin, get_type_hints

from moopt import CoarseToFineBalancer, MGDABalancer
from moopt.balancers.coarse_to_fine import LogitOptimizer
from moopt.balancers.mgda import Normalization
from moopt.pytorch import GramMode, balanced_backward
from moopt_lic.amp import AMP_MODES, AmpMode
from moopt_lic.balancers import BALANCERS as BALANCER_REGISTRY
from moopt_lic.balancers import build_base_balancer, default_of
from moopt_lic.errors import InputError
from moopt_lic.models import FACTORY, MODELS, ModelSpec, factory_name
from moopt_lic.objectives import Metric

__all__ = [
    "BALANCERS",
    "DEFAULT_STEPS",
    "DEMO_TARGET_BPP",
    "DeviceName",
    "LrSchedule",
    "TrainConfig",
    "build_parser",
    "config_from_args",
    "flags_markdown",
    "resume_conflicts",
    "set_fields",
    "typed_flags",
]

#: Steps of a run that gives neither ``--steps`` nor ``--epochs`` (the built-in demo).
DEFAULT_STEPS = 1500

#: The rate target of ``python -m moopt_lic.train`` with no arguments (the demo); without
#: one, coarse-to-fine would train the demo codec far below the rate its λ asks for.
DEMO_TARGET_BPP = 0.3

#: Names understood by ``--balancer``: the registry's ([`moopt_lic.balancers`][]).
BALANCERS = tuple(BALANCER_REGISTRY)

LrSchedule = Literal["constant", "cosine", "step"]
"""A learning-rate schedule, what ``--lr-schedule`` accepts."""

DeviceName = Literal["auto", "cpu", "cuda"]
"""A device, what ``--device`` accepts (``auto``: CUDA when present, else CPU)."""


RUNTIME_FIELDS = ("device", "progress", "workers", "out", "resume", "dist_timeout")
"""Config fields a ``--resume`` takes from the current command line, not from the checkpoint.

They may differ from the run's: they change where and how visibly it runs, not what it
computes. Every other flag given with ``--resume`` must have the run's value. (``threads``
is not one: another thread count changes the order of float sums, and the resumed run would
no longer be bit-identical.)"""


def _opt(help: str, flag: str | None = None, short: str | None = None, **kwargs: Any) -> Any:
    """Metadata of one field: its help text, flag name and argparse extras.

    The type, choices and repetition of the flag come from the field's annotation (see
    ``_Kind``); ``kwargs`` holds only what an annotation cannot say (a parsing function, a
    registry's names).
    """
    return {"help": help, "flag": flag, "short": short, "argparse": kwargs}


@dataclass
class TrainConfig:
    """Everything a training run depends on; ``train(TrainConfig(...))`` runs it.

    Every field is also a flag of ``python -m moopt_lic.train`` (``lmbda`` is ``--lambda``;
    underscores become dashes). See the "Train a codec" page for the full flag list.
    """

    # data
    dataset: str | None = field(
        default=None,
        metadata=_opt(
            "folder of training photos (PNG/JPEG/WebP, searched recursively); default: the "
            "built-in photos shipped with scikit-image",
            short="-d",
        ),
    )
    eval_dataset: str | None = field(
        default=None,
        metadata=_opt(
            "folder of validation/evaluation photos; default: --holdout images of --dataset "
            "(the built-in run holds out skimage's 'coffee')"
        ),
    )
    holdout: int = field(
        default=1,
        metadata=_opt(
            "images of --dataset held out for validation when there is no --eval-dataset"
        ),
    )
    patch_size: int = field(
        default=64,
        metadata=_opt(
            "side of the random square training crops; a multiple of the model's downsampling "
            "factor (64 for the hyperprior models, 16 for bmshj2018-factorized)"
        ),
    )
    batch_size: int = field(
        default=8,
        metadata=_opt("crops per step and process (under torchrun the global batch is N× this)"),
    )
    workers: int = field(default=0, metadata=_opt("data-loading worker processes"))
    # model
    model: str = field(
        default="mbt2018-mean",
        metadata=_opt(
            f"the codec: a CompressAI zoo name ({', '.join(MODELS)}), or "
            f"package.module:factory, a codec of your own (a callable on the Python path "
            f"returning a compressai.models.CompressionModel, called with N=/M= when given; "
            f"in Python the callable itself)",
            short="-m",
            type=lambda value: _model_argument(value),
        ),
    )
    quality: int | None = field(
        default=None,
        metadata=_opt(
            "zoo quality 1..8: N and M as CompressAI's zoo has them (never downloads weights); "
            "default: the small demo size (N 64, M 96; ELIC M 192)",
            short="-q",
        ),
    )
    N: int | None = field(
        default=None,
        metadata=_opt("override the number of channels N", flag="--N"),
    )
    M: int | None = field(
        default=None,
        metadata=_opt("override the latent channels M", flag="--M"),
    )
    # objectives
    metric: Metric = field(
        default="mse",
        metadata=_opt(
            "distortion: λ·255²·MSE or λ·(1 − MS-SSIM); MS-SSIM needs --patch-size > 160"
        ),
    )
    lmbda: float = field(
        default=0.013,
        metadata=_opt(
            "the rate–distortion trade-off λ > 0 inside D (see 'What λ means under balancing')",
            flag="--lambda",
        ),
    )
    target_bpp: float | None = field(
        default=None,
        metadata=_opt(
            "hold the training rate at this many bits per pixel, under any balancer (λ then "
            "sets only the starting trade-off)"
        ),
    )
    target_psnr: float | None = field(
        default=None,
        metadata=_opt(
            "hold the training distortion at this PSNR in dB (λ·255²·10^(−P/10); --metric mse "
            "only), under any balancer"
        ),
    )
    # balancer
    balancer: str = field(
        default="coarse-to-fine",
        metadata=_opt("how rate and distortion gradients are combined", choices=list(BALANCERS)),
    )
    balancer_option: list[str] | None = field(
        default=None,
        metadata=_opt(
            "a setting of the balancer as NAME=VALUE, repeatable (e.g. --balancer pcgrad "
            "--balancer-option seed=3); the names are the balancer class's arguments"
        ),
    )
    logit_lr: float = field(
        default=default_of(CoarseToFineBalancer, "logit_lr"),
        metadata=_opt("coarse-to-fine: logit learning rate β"),
    )
    gamma: float = field(
        default=default_of(CoarseToFineBalancer, "gamma"),
        metadata=_opt("coarse-to-fine: logit weight decay γ"),
    )
    logit_optimizer: LogitOptimizer = field(
        default=default_of(CoarseToFineBalancer, "logit_optimizer"),
        metadata=_opt("coarse-to-fine: how the logits are updated"),
    )
    loss_floor: float | None = field(
        default=None,
        metadata=_opt(
            "shift m of the log-losses log(L − m) (default: −1 for coarse-to-fine, 0 for eq-qp)"
        ),
    )
    update_every: int = field(
        default=1,
        metadata=_opt(
            "coarse-to-fine: re-evaluate the losses for the logit update every n steps "
            "(n× cheaper, n× fewer logit updates)"
        ),
    )
    mgda_normalization: Normalization = field(
        default=default_of(MGDABalancer, "normalization"),
        metadata=_opt("mgda: gradient normalisation"),
    )
    features: bool = field(
        default=False,
        metadata=_opt(
            "mgda/eq-qp: take the Gram of the gradients w.r.t. the latent y (one backward pass "
            "through the encoder) instead of all parameters"
        ),
    )
    gram_mode: GramMode = field(
        default=default_of(balanced_backward, "gram_mode"),
        metadata=_opt("mgda/eq-qp: per-objective gradients by k passes or one batched pass"),
    )
    # optimisation
    steps: int | None = field(
        default=None,
        metadata=_opt(f"training steps (default {DEFAULT_STEPS} unless --epochs is given)"),
    )
    epochs: float | None = field(
        default=None,
        metadata=_opt(
            "training length in passes over the training images (one crop each); replaces --steps"
        ),
    )
    lr: float = field(default=1e-3, metadata=_opt("Adam learning rate of the codec"))
    aux_lr: float = field(
        default=1e-3,
        metadata=_opt(
            "Adam learning rate of the entropy bottleneck's quantiles (aux_loss, never balanced)"
        ),
    )
    lr_schedule: LrSchedule = field(
        default="cosine", metadata=_opt("learning-rate schedule over the run")
    )
    clip_max_norm: float = field(
        default=1.0, metadata=_opt("clip the balanced gradient's norm to this (0: no clipping)")
    )
    amp: AmpMode = field(
        default="off",
        metadata=_opt(
            "mixed precision: the transforms under torch.autocast in bfloat16 or float16 "
            "(fp16 with a GradScaler), the entropy models in float32 (see 'Mixed precision')"
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_opt(
            "start from this checkpoint's model weights (fine-tuning, e.g. with --balancer eq-qp "
            "and the checkpoint's rate as --target-bpp)"
        ),
    )
    # run
    seed: int = field(
        default=0,
        metadata=_opt(
            "fixes the initial weights, the data order, the crops and the quantisation noise"
        ),
    )
    device: DeviceName = field(default="auto", metadata=_opt("auto: CUDA when present, else CPU"))
    threads: int | None = field(default=None, metadata=_opt("torch CPU threads (default: torch's)"))
    out: str | None = field(
        default=None,
        metadata=_opt("output folder (default: runs/<date>-<model>-<balancer>)", short="-o"),
    )
    resume: bool = field(
        default=False,
        metadata=_opt(
            "continue the run in --out exactly where its last checkpoint left it; other flags "
            "given must have the run's values (--device, --workers, --progress and "
            "--dist-timeout may differ), so the command that started it works"
        ),
    )
    checkpoint_every: int = field(default=200, metadata=_opt("write checkpoint.pt every n steps"))
    eval_every: int = field(
        default=200, metadata=_opt("validate (and keep checkpoint_best.pt) every n steps")
    )
    log_every: int = field(default=10, metadata=_opt("TensorBoard scalars every n steps"))
    dist_timeout: float = field(
        default=600.0,
        metadata=_opt(
            "torchrun: seconds a collective waits for the other processes before the job "
            "fails (a dead or hung rank ends the job instead of hanging it)"
        ),
    )
    progress: bool = field(default=True, metadata=_opt("show a progress bar"))
    final_eval: bool = field(
        default=True,
        metadata=_opt("at the end, compress and decompress the evaluation images for real"),
    )

    def __post_init__(self) -> None:
        if callable(self.model) and not isinstance(self.model, str):
            self.model = factory_name(self.model)  # a checkpoint records the name

    @property
    def model_spec(self) -> ModelSpec:
        """The codec to build (see [`ModelSpec`][moopt_lic.ModelSpec] for the defaults)."""
        return ModelSpec(self.model, self.quality, self.N, self.M)

    def validate(self) -> None:
        """Raise [`InputError`][moopt_lic.InputError] for a bad value.

        The message names the flag and what is allowed.
        """
        spec = self.model_spec
        build_base_balancer(self)  # an unknown name or a refused setting: one line, now
        if not (math.isfinite(self.lmbda) and self.lmbda > 0):
            raise InputError(f"--lambda must be a finite number > 0, got {self.lmbda}")
        if self.patch_size < 1 or self.patch_size % spec.downsampling:
            suggestion = max(1, self.patch_size // spec.downsampling) * spec.downsampling
            raise InputError(
                f"--patch-size {self.patch_size} is not a multiple of {spec.downsampling}, the "
                f"downsampling factor of {self.model}; use e.g. {suggestion}"
            )
        if self.metric == "ms-ssim" and self.patch_size <= 160:
            raise InputError(
                f"--metric ms-ssim needs --patch-size > 160 (pytorch_msssim's five scales with "
                f"an 11-pixel window), got {self.patch_size}; use 192 or 256"
            )
        positive = ("batch_size", "checkpoint_every", "eval_every", "log_every", "update_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"--{_flag(name)} must be ≥ 1, got {getattr(self, name)}")
        for name in ("lr", "aux_lr", "dist_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        for name in ("logit_lr", "gamma", "clip_max_norm", "holdout", "workers"):
            if getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)} must be ≥ 0, got {getattr(self, name)}")
        if self.steps is not None and self.epochs is not None:
            raise InputError("give --steps or --epochs, not both")
        if self.epochs is not None and not self.epochs > 0:
            raise InputError(f"--epochs must be > 0, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be ≥ 1, got {self.steps}")
        if self.loss_floor is not None and not self.loss_floor <= 0:
            raise InputError(
                f"--loss-floor must be ≤ 0 (rate and distortion are ≥ 0 and their logs are "
                f"taken of L − floor), got {self.loss_floor}"
            )
        if self.target_bpp is not None and self.target_psnr is not None:
            raise InputError("give --target-bpp or --target-psnr, not both: one target at a time")
        if self.target_psnr is not None and self.metric != "mse":
            raise InputError(
                f"--target-psnr holds λ·255²·MSE, so it needs --metric mse, got --metric "
                f"{self.metric}; hold the rate with --target-bpp instead"
            )
        for name in ("target_bpp", "target_psnr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"--{_flag(name)} must be a finite number > 0, got {value}")
        if self.amp not in AMP_MODES:
            raise InputError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be ≥ 1, got {self.threads}")

    def total_steps(self, epoch_size: int, processes: int = 1) -> int:
        """Return the run's length in steps (``--epochs`` converted with ``epoch_size`` images).

        A step consumes ``batch_size × processes`` samples (the global batch).
        """
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * epoch_size / (self.batch_size * processes)))
        return DEFAULT_STEPS if self.steps is None else self.steps

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and ``metrics.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of [`to_dict`][moopt_lic.config.TrainConfig.to_dict].

        Raises
        ------
        InputError
            For a non-dict, unknown keys, or a value not of its field's type.
        """
        if not isinstance(values, dict):
            raise InputError(f"the configuration is a {type(values).__name__}, not a dict")
        kinds = _kinds()
        unknown = sorted(str(key) for key in set(values) - set(kinds))
        if unknown:
            raise InputError(f"unknown configuration keys: {', '.join(unknown)}")
        for name, value in values.items():
            if not kinds[name].admits(value):
                raise InputError(f"configuration {name!r} is {value!r}, not of type {kinds[name]}")
        return cls(**values)


@dataclass(frozen=True)
class _Kind:
    """What a field's annotation says about its values: the argparse and checkpoint view.

    Attributes
    ----------
    base : type
        ``bool``, ``int``, ``float`` or ``str`` (a ``Literal`` of strings is ``str``), or
        ``list`` for a repeatable flag (a ``list[str]``).
    optional : bool
        Whether ``None`` is allowed (``X | None``).
    choices : tuple of str, optional
        A ``Literal``'s values: the only ones the flag accepts.
    """

    base: type
    optional: bool = False
    choices: tuple[str, ...] | None = None

    @classmethod
    def of(cls, hint: Any) -> _Kind:
        """Read a resolved annotation: ``X``, ``X | None``, ``Literal[...]``, ``list[str]``."""
        options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        present = [option for option in options if option is not type(None)]
        if len(present) != 1:
            raise TypeError(f"a flag has one type (or that type | None), not {hint}")
        inner, optional = present[0], len(options) > 1
        if get_origin(inner) is Literal:
            choices = get_args(inner)
            if not all(isinstance(choice, str) for choice in choices):
                raise TypeError(f"a flag's Literal holds strings, not {inner}")
            return cls(str, optional, choices)
        if get_origin(inner) is list:
            if get_args(inner) != (str,):
                raise TypeError(f"a repeatable flag is a list[str], not {inner}")
            return cls(list, optional)
        if inner not in (bool, int, float, str):
            raise TypeError(f"no flag for a field of type {inner}")
        return cls(inner, optional)

    def admits(self, value: Any) -> bool:
        """Return whether ``value`` has the field's type (an int fits a float).

        A ``Literal`` field takes any string here: its values are checked where they are
        used, by messages that name the flag.
        """
        if value is None:
            return self.optional
        if isinstance(value, list):
            return self.base is list and all(isinstance(item, str) for item in value)
        if isinstance(value, bool):
            return self.base is bool
        if isinstance(value, int):
            return self.base in (int, float)
        if isinstance(value, float):
            return self.base is float
        return isinstance(value, str) and self.base is str

    def __str__(self) -> str:
        """Name the type as messages do: ``float | None``, ``list[str] | None``, ..."""
        name = "list[str]" if self.base is list else self.base.__name__
        return f"{name} | None" if self.optional else name


@functools.cache
def _kinds() -> dict[str, _Kind]:
    """Return every field's ``_Kind``, read from its resolved annotation."""
    hints = get_type_hints(TrainConfig)
    return {f.name: _Kind.of(hints[f.name]) for f in dataclasses.fields(TrainConfig)}


def _model_argument(value: str) -> str:
    """``--model``: a zoo name or ``package.module:factory`` (imported when validated)."""
    if value in MODELS or FACTORY.fullmatch(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose a zoo name: {', '.join(MODELS)}; or name a codec of "
        f"your own as package.module:factory, a module on the Python path, not a file)"
    )


def _flag(name: str) -> str:
    meta = next(f.metadata for f in dataclasses.fields(TrainConfig) if f.name == name)
    return (meta.get("flag") or "--" + name.replace("_", "-")).lstrip("-")


class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "python -m moopt_lic.train") -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m moopt_lic.train``, one flag per config field."""
    parser = _OneLineErrorParser(
        prog=prog,
        description="Train a CompressAI codec with a moopt gradient balancer. With no "
        "arguments: a small codec on built-in photos with the coarse-to-fine balancer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    kinds = _kinds()
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flags = [meta.get("flag") or "--" + f.name.replace("_", "-")]
        if meta.get("short"):
            flags.insert(0, meta["short"])
        kwargs = {"help": meta["help"], "dest": f.name, "default": f.default}
        kwargs |= _argparse_kwargs(f.name, kinds[f.name]) | meta["argparse"]
        parser.add_argument(*flags, **kwargs)
    return parser


def _argparse_kwargs(name: str, kind: _Kind) -> dict[str, Any]:
    """Return the ``add_argument`` settings that the kind of the field ``name`` implies."""
    if kind.base is bool:
        return {"action": argparse.BooleanOptionalAction}  # --features / --no-features
    kwargs: dict[str, Any] = {"type": kind.base}
    if kind.base is list:
        kwargs = {"type": str, "action": "append"}  # repeated: --balancer-option a=1 ... b=2
    if kind.choices is not None:
        kwargs["choices"] = list(kind.choices)
    if kind.optional:
        kwargs["metavar"] = name.upper() if name not in ("N", "M") else name
    return kwargs


def flags_markdown() -> str:
    """Return the flags of ``python -m moopt_lic.train`` as a Markdown table, from the parser.

    The documentation's "Train a codec" page shows this table (inserted at build time), so
    the documented flags are always the parser's.
    """
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
        default = "" if action.default in (None, argparse.SUPPRESS) else f"`{action.default}`"
        meaning = action.help or ""
        if action.choices:
            meaning += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
        rows.append(f"| {flags} | {default} | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a validated configuration.

    The configuration is a [`TrainConfig`][moopt_lic.TrainConfig].
    """
    args = build_parser().parse_args(argv)
    config = TrainConfig(**vars(args))
    config.validate()
    return config


def typed_flags(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Return the fields a command line sets, each with its flag as typed.

    ``["-m", "x", "--lambda", "0.1"]`` gives ``{"model": "-m", "lmbda": "--lambda"}``; a flag
    typed in a form not found verbatim (an abbreviation) gets its long name.
    """
    tokens = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(tokens))
    options = {option: a.dest for a in parser._actions for option in a.option_strings}
    typed: dict[str, str] = {}
    for token in tokens:
        if token == "--":
            break
        option = token.split("=", 1)[0]
        if options.get(option) in given:
            typed[options[option]] = option
    for name in given:
        typed.setdefault(name, "--" + _flag(name))
    return typed


def set_fields(config: TrainConfig) -> dict[str, str]:
    """Return the fields of ``config`` that differ from their defaults, with their flags.

    What a Python caller of [`train`][moopt_lic.trainer.train] "typed".
    """
    return {
        f.name: "--" + _flag(f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != f.default
    }


def resume_conflicts(saved: TrainConfig, new: TrainConfig, typed: dict[str, str]) -> list[str]:
    """Return ``--flag old → new`` for each typed setting that differs from the saved run's.

    The ``RUNTIME_FIELDS`` may differ and are not listed.
    """
    conflicts = []
    for name, flag in typed.items():
        if name in RUNTIME_FIELDS:
            continue
        old, value = getattr(saved, name), getattr(new, name)
        if old == value:
            continue
        if isinstance(old, bool):
            conflicts.append(f"{_bool_flag(name, old)} → {_bool_flag(name, value)}")
        else:
            conflicts.append(f"{flag} {_shown(old)} → {_shown(value)}")
    return conflicts


def _bool_flag(name: str, value: Any) -> str:
    return f"--{'' if value else 'no-'}{_flag(name)}"


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)
