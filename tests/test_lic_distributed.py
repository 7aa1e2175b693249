"""torchrun: two CPU processes (gloo) with batch b train like one process with batch 2b."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from crashes import write_killed_before_checkpoint

from moopt_lic import InputError, TrainConfig, load_model, train
from moopt_lic.distributed import fingerprint
from moopt_lic.models import ModelSpec, build_model

#: Parameters of the two runs agree to this (float32 sums in another order; 6 Adam steps).
TOLERANCE = 1e-4


def _flags(data: Path, balancer: str, batch: int, out: Path, steps: int = 6) -> list[str]:
    return [
        "-d", str(data), "--N", "8", "--M", "8", "--batch-size", str(batch),
        "--steps", str(steps), "--checkpoint-every", "1", "--eval-every", "100",
        "--balancer", balancer, "--threads", "1", "--no-progress", "--no-final-eval",
        "-o", str(out),
    ]  # fmt: skip


def _torchrun(flags: list[str], script: Path | None = None, **kwargs) -> subprocess.Popen:
    """torchrun of ``python -m moopt_lic.train`` (or ``script``) in a process group of its own."""
    port = str(29500 + os.getpid() % 1000)
    program = ["-m", "moopt_lic.train"] if script is None else [str(script)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_port", port, *program, *flags]  # fmt: skip
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def _run_two(flags: list[str]) -> None:
    process = _torchrun(flags, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


def _checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=False)


def _max_difference(a: dict, b: dict) -> float:
    return max(
        (a[name].double() - b[name].double()).abs().max().item()
        for name in a
        if a[name].is_floating_point() and a[name].numel()
    )


@pytest.mark.slow
@pytest.mark.parametrize("balancer", ["weighted-sum", "coarse-to-fine", "eq-qp"])
def test_two_processes_train_like_one_with_twice_the_batch(test_images, tmp_path, balancer):
    """Same samples, same noise, same weights: parameters agree to TOLERANCE.

    Every checkpoint step (here every step) the processes compare a digest of their
    parameters and balancer state and stop if they differ, so finishing means the balancer
    state was identical on both ranks at every step.
    """
    _run_two(_flags(test_images, balancer, 2, tmp_path / "two"))
    config = TrainConfig(**{**_config(test_images, balancer, 4), "out": str(tmp_path / "one")})
    train(config)
    two, one = _checkpoint(tmp_path / "two"), _checkpoint(tmp_path / "one")
    assert two["processes"] == 2 and one["processes"] == 1 and two["step"] == one["step"] == 6
    assert not any(name.startswith("module.") for name in two["model"])
    assert _max_difference(two["model"], one["model"]) < TOLERANCE
    for key in ("logits",) if balancer == "coarse-to-fine" else ():
        torch.testing.assert_close(
            torch.tensor(two["balancer"][key]),
            torch.tensor(one["balancer"][key]),
            atol=1e-4,
            rtol=0,
        )
    load_model(tmp_path / "two" / "checkpoint.pt")  # the plain model's state_dict


def _config(data: Path, balancer: str, batch: int) -> dict:
    return dict(dataset=str(data), N=8, M=8, batch_size=batch, steps=6, checkpoint_every=1,
                eval_every=100, balancer=balancer, threads=1, progress=False,
                final_eval=False)  # fmt: skip


@pytest.mark.slow
def test_resume_under_two_processes_after_sigkill(test_images, tmp_path):
    """A 2-process run killed mid-training and resumed under torchrun ends bit-identical."""
    _run_two(_flags(test_images, "coarse-to-fine", 2, tmp_path / "full", steps=10))
    killed = tmp_path / "killed"
    process = _torchrun(
        _flags(test_images, "coarse-to-fine", 2, killed, steps=10),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        script=write_killed_before_checkpoint(tmp_path, 5),
    )
    assert process.wait(timeout=600) != 0  # rank 0 died; torchrun ended the job
    assert _checkpoint(killed)["step"] == 4
    _run_two(["--resume", "-o", str(killed), "--no-progress"])
    full, resumed = _checkpoint(tmp_path / "full"), _checkpoint(killed)
    assert resumed["step"] == 10
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert repr(full["balancer"]) == repr(resumed["balancer"])


def test_resume_needs_the_same_number_of_processes(tiny_config, tmp_path):
    train(tiny_config(steps=2))
    state = torch.load(Path(tiny_config().out) / "checkpoint.pt", weights_only=False)
    state["processes"] = 2
    torch.save(state, Path(tiny_config().out) / "checkpoint.pt")
    with pytest.raises(InputError, match=r"trained by 2 process\(es\), not 1"):
        train(tiny_config(resume=True))


def test_fingerprint_sees_parameters_balancer_and_step():
    torch.manual_seed(0)
    model = build_model(ModelSpec("bmshj2018-factorized", N=8, M=8))
    base = fingerprint(model, {"logits": [0.0, 0.0]}, 3)
    assert fingerprint(model, {"logits": [0.0, 0.0]}, 3) == base
    assert fingerprint(model, {"logits": [0.0, 1e-12]}, 3) != base
    assert fingerprint(model, {"logits": [0.0, 0.0]}, 4) != base
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert fingerprint(model, {"logits": [0.0, 0.0]}, 3) != base


def _children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_dead_rank_ends_the_job(test_images, tmp_path):
    """SIGKILL one worker mid-training: torchrun ends the job, non-zero, instead of hanging."""
    out = tmp_path / "run"
    process = _torchrun(
        _flags(test_images, "coarse-to-fine", 2, out, steps=10_000),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "checkpoint.pt").exists() and _checkpoint(out)["step"] >= 2:
                break
            time.sleep(0.05)
        workers = _children(process.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        assert process.wait(timeout=120) != 0
        time.sleep(1)
        assert not any(_running(pid) for pid in workers)  # the other worker was stopped too
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_two_processes_hold_a_target_like_one(test_images, tmp_path):
    """Under torchrun the controller sees the global losses: the same state on every rank
    (checked each step by the digest) and the same as one process with twice the batch."""
    target = ["--target-bpp", "0.5"]
    _run_two([*_flags(test_images, "eq-qp", 2, tmp_path / "two"), *target])
    config = {**_config(test_images, "eq-qp", 4), "out": str(tmp_path / "one"), "target_bpp": 0.5}
    train(TrainConfig(**config))
    two, one = _checkpoint(tmp_path / "two"), _checkpoint(tmp_path / "one")
    assert _max_difference(two["model"], one["model"]) < TOLERANCE
    for key in ("control", "integral"):
        torch.testing.assert_close(
            torch.tensor(two["balancer"][key]),
            torch.tensor(one["balancer"][key]),
            atol=1e-4,
            rtol=0,
        )
    assert two["target_losses"] == pytest.approx(one["target_losses"], rel=1e-4)
