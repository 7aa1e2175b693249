"""A compact copy of each finished run, committed with the repository, so that finished work
outlives the machine and the session it ran in.

A benchmark's runs folder (``runs/``, ignored by git) holds all that a run writes: checkpoints
with the optimizers' state, the whole TensorBoard log. A session that ends uncleanly can come
back to a fresh checkout without it, and with it go CPU-days of converged codecs. ``keep``
copies what a finished run's results consist of into a folder that is committed:

* ``metrics.json``, ``evaluation.json`` and ``diverged.json``, and any other result file
  the benchmark names (``files``), as written;
* ``checkpoint.pt`` without the state only resuming needs (the optimizers', the schedule's,
  the random generators'): a kept run is finished and never resumes. Its weights are kept
  only for a run that others start from (``weights=True``); without them the file holds the
  run's configuration and last steps' targeted losses, and is no model to load;
* ``tensorboard/``: the scalars the report reads (``tags``), each step's value exactly (the
  log stores float32, and so does the copy), without wall times.

``add_files`` adds to a kept copy what its run measured after it was kept, and leaves the
rest of the copy as it is. ``restore`` puts a kept run back where its runs folder has none;
there it counts as finished (and coded), so it is skipped, reported, and started from as
before.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from protocol import folder_done, scalar_histories

KEPT_FILES = ("metrics.json", "evaluation.json", "diverged.json")
#: Checkpoint entries that only a resumed run reads.
RESUME_ONLY = ("optimizer", "aux_optimizer", "scheduler", "rng", "scaler")


def keep(
    folder: Path, kept: Path, tags: Sequence[str], *, weights: bool, files: Sequence[str] = ()
) -> None:
    """Write the compact copy of the finished run in ``folder`` to ``kept`` (replacing an
    older copy): its result files and those of ``files`` it has, its final checkpoint
    without the resume-only state (and without the weights unless ``weights``), and its
    scalars ``tags``."""
    from torch.utils.tensorboard import SummaryWriter

    from moopt_lic.checkpoint import atomic_save, load_safely

    if not folder_done(folder):
        raise ValueError(f"{folder}: not finished (no metrics.json or diverged.json) to keep")
    # written beside, then moved: an interrupted copy never passes for a kept run
    partial = kept.with_name(f".{kept.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in (*KEPT_FILES, *files):
        if (folder / name).exists():
            shutil.copyfile(folder / name, partial / name)
    if (folder / "checkpoint.pt").exists():
        dropped = RESUME_ONLY if weights else (*RESUME_ONLY, "model")
        checkpoint = load_safely(folder / "checkpoint.pt")
        atomic_save({key: value for key, value in checkpoint.items() if key not in dropped},
                    partial / "checkpoint.pt")  # fmt: skip
    logged = scalar_histories(folder, *tags) if (folder / "tensorboard").is_dir() else {}
    histories = {tag: points for tag, points in logged.items() if points}
    if histories:
        writer = SummaryWriter(str(partial / "tensorboard"))
        for tag, points in histories.items():
            for step, value in points:
                writer.add_scalar(tag, value, step, walltime=0.0)
        writer.close()
    shutil.rmtree(kept, ignore_errors=True)
    partial.replace(kept)


def add_files(folder: Path, kept: Path, files: Sequence[str]) -> list[str]:
    """Copy those of the text files ``files`` that the run in ``folder`` has and its kept
    copy ``kept`` lacks (measured after it was kept) into ``kept``, each whole or not at all,
    leaving the rest of the copy as it is; the names copied."""
    from moopt_lic.checkpoint import atomic_write_text

    added = [name for name in files if (folder / name).exists() and not (kept / name).exists()]
    for name in added:
        atomic_write_text((folder / name).read_text(encoding="utf-8"), kept / name)
    return added


def restore(kept: Path, folder: Path) -> bool:
    """Copy the kept run ``kept`` to ``folder`` if ``folder`` does not exist; whether it did."""
    if folder.exists() or folder.is_symlink() or not kept.is_dir():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(kept, folder)
    return True
