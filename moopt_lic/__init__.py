"""moopt_lic: train CompressAI learned image compression codecs with moopt balancers.

* [`train`][moopt_lic.trainer.train] with a [`TrainConfig`][moopt_lic.TrainConfig] (or
  ``python -m moopt_lic.train``) trains a codec with any balancer and writes checkpoints,
  TensorBoard logs and ``metrics.json``;
* [`load_model`][moopt_lic.load_model] rebuilds a trained codec from a checkpoint file alone;
* [`Rate`][moopt_lic.Rate] and [`Distortion`][moopt_lic.Distortion] are the two objectives, as
  [`moopt.Objective`][moopt.Objective].
"""

import warnings
from typing import TYPE_CHECKING, Any

# CompressAI 1.2.8 calls torch.jit.script at import time, which torch ≥ 2.10 deprecates
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from moopt_lic.config import TrainConfig  # noqa: E402
from moopt_lic.errors import InputError  # noqa: E402
from moopt_lic.models import ModelSpec, load_model  # noqa: E402
from moopt_lic.objectives import CodecBatch, Distortion, Rate  # noqa: E402

if TYPE_CHECKING:
    from moopt_lic.trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "CodecBatch",
    "Distortion",
    "InputError",
    "ModelSpec",
    "Rate",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "load_model",
    "train",
]

# The trainer (TensorBoard, tqdm, the balancing glue) is imported on first use of one of its
# names, so that evaluating and comparing checkpoints never load it.
_TRAINER_NAMES = frozenset({"TrainResult", "TrainingDiverged", "train"})


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from moopt_lic import trainer

        value = getattr(trainer, name)
        globals()[name] = value  # later lookups find it without coming here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
