"""Training commands that SIGKILL themselves at a chosen step, whatever the machine's speed.

Killing a run from outside once its checkpoint shows step n races the run itself: on a fast
machine it may have finished before the signal lands. These scripts kill from inside, as the
trainer is about to write the checkpoint of ``step``, so the kill always lands mid-run and
that step's work is lost with it.
"""

from __future__ import annotations

from pathlib import Path

_TEMPLATE = """
import os, runpy, signal, sys
import moopt_lic.trainer as trainer
save = trainer.atomic_save
def save_unless_step(state, path):
    if state["step"] == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    save(state, path)
trainer.atomic_save = save_unless_step
sys.argv[0] = "moopt_lic.train"
runpy.run_module("moopt_lic.train", run_name="__main__")
"""


def killed_before_checkpoint(step: int) -> str:
    """Python source that runs ``python -m moopt_lic.train`` on its arguments and dies with
    SIGKILL as the checkpoint of ``step`` is about to be written."""
    return _TEMPLATE.format(step=step)


def write_killed_before_checkpoint(folder: Path, step: int) -> Path:
    """The script of `killed_before_checkpoint` as a file in ``folder``, for torchrun (which
    runs files): the rank that writes checkpoints dies, and torchrun ends the job."""
    script = folder / f"killed_before_checkpoint_{step}.py"
    script.write_text(killed_before_checkpoint(step))
    return script
