"""moopt_lic.train: the training loop, its outputs, resume, divergence and bad input."""

import json
import math
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from crashes import killed_before_checkpoint

from moopt_lic import Distortion, InputError, TrainConfig, TrainingDiverged, load_model, train
from moopt_lic.cli import main
from moopt_lic.config import config_from_args, typed_flags
from moopt_lic.trainer import Trainer


def _fixed_batch(trainer, n=4):
    samples = [trainer.data[i] for i in range(1000, 1000 + n)]
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


def _total_loss(trainer, x, seeds):
    with torch.no_grad():
        return float(sum(trainer.losses(x, seeds).values()))


@pytest.mark.parametrize(
    ("balancer", "extra"),
    [
        ("weighted-sum", {}),
        ("coarse-to-fine", {}),
        ("coarse-to-fine", {"update_every": 3}),
        ("mgda", {"mgda_normalization": "loss"}),
        ("eq-qp", {}),
        ("eq-qp", {"features": True}),
        ("eq-qp", {"gram_mode": "batched"}),
    ],
)
def test_every_balancer_lowers_the_loss(tiny_config, balancer, extra):
    """30 steps lower R + D on a fixed held-aside batch by at least 30 % (typically 45–75 %)."""
    config = tiny_config(balancer=balancer, steps=30, lr=3e-3, **extra)
    trainer = Trainer(config, Path(config.out), None)
    x, seeds = _fixed_batch(trainer)
    before = _total_loss(trainer, x, seeds)
    trainer.run()
    after = _total_loss(trainer, x, seeds)
    assert trainer.step == 30
    assert after < 0.7 * before, (before, after)


def test_outputs_and_logged_effective_lambda(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(
        balancer="weighted-sum",
        steps=6,
        log_every=2,
        eval_every=3,
        checkpoint_every=3,
        final_eval=True,
        lmbda=0.0067,
    )
    result = train(config)
    out = result.out
    for name in ("checkpoint.pt", "checkpoint_best.pt", "metrics.json"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["lambda"] == 0.0067
    final = metrics["final_evaluation"]
    assert len(final["images"]) == 1 and final["bpp"] > 0 and math.isfinite(final["psnr"])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "train/rate_bpp",
        "train/distortion",
        "train/loss",
        "train/psnr",
        "balancer/weight_rate",
        "balancer/weight_distortion",
        "balancer/effective_lambda",
        "time/step_seconds",
        "val/psnr",
        "val/bpp",
    ):
        assert tag in tags
    lambdas = [e.value for e in events.Scalars("balancer/effective_lambda")]
    assert [e.step for e in events.Scalars("balancer/effective_lambda")] == [2, 4, 6]
    assert all(math.isclose(v, 0.0067, rel_tol=1e-6) for v in lambdas)


def test_the_effective_lambda_of_several_steps_is_that_of_their_mean_weights():
    """λ·mean(w_D)/mean(w_R): steps that pass w_R through zero do not decide it."""
    from moopt_lic.effective_lambda import mean_effective_lambda

    weights = [(1.0, 1.0), (-0.01, 1.0), (0.01, 1.0)]
    assert mean_effective_lambda(0.01, weights) == pytest.approx(0.03)
    assert math.isnan(mean_effective_lambda(0.01, []))


def test_metrics_give_the_effective_lambda_of_the_last_steps_weights(tiny_config):
    """metrics.json's effective λ comes from the weights logged at every step (all within
    the window), and the checkpoint keeps those weights for an exact resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny_config(balancer="eq-qp", steps=5, log_every=1, lmbda=0.0067))
    events = EventAccumulator(str(result.out / "tensorboard"))
    events.Reload()
    rates = [e.value for e in events.Scalars("balancer/weight_rate")]
    distortions = [e.value for e in events.Scalars("balancer/weight_distortion")]
    metrics = json.loads((result.out / "metrics.json").read_text())
    expected = 0.0067 * np.mean(distortions) / np.mean(rates)
    assert metrics["effective_lambda"] == pytest.approx(expected, rel=1e-5)
    state = torch.load(result.out / "checkpoint.pt", weights_only=True)
    np.testing.assert_allclose(state["recent_weights"], np.c_[rates, distortions], rtol=1e-6)


def test_load_model_rebuilds_the_trained_model(tiny_config):
    result = train(tiny_config(steps=3))
    checkpoint = torch.load(result.out / "checkpoint.pt", weights_only=True)
    model = load_model(result.out / "checkpoint.pt")
    parameters = dict(model.named_parameters())  # buffers: CDF tables rebuilt by update()
    assert parameters and not model.training
    for name, value in parameters.items():
        assert torch.equal(value, checkpoint["model"][name]), name


def test_epochs_set_the_length(tiny_config):
    config = tiny_config(steps=None, epochs=2.5, batch_size=2)  # 3 training images
    assert config.total_steps(3) == 4
    with pytest.raises(InputError, match="not both"):
        tiny_config(steps=5, epochs=1).validate()


def test_resume_of_a_finished_run_does_nothing(tiny_config):
    config = tiny_config(steps=2)
    first = train(config)
    stamp = (first.out / "checkpoint.pt").stat().st_mtime_ns
    again = train(tiny_config(steps=2, resume=True))
    assert again.metrics["steps"] == 2 and again.already_finished
    assert (first.out / "checkpoint.pt").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="already holds a run; pass --resume"):
        train(tiny_config(steps=2))


def test_a_crash_while_writing_the_metrics_leaves_a_run_that_resumes(tiny_config, monkeypatch):
    """metrics.json says a run finished (benchmarks skip it): a crash while it is written
    leaves none, torn or whole, and no temporary; the run resumes from its last checkpoint
    and finishes."""
    from moopt_lic import checkpoint

    replace_file = checkpoint.os.replace

    def crash_on_metrics(source, target):
        if Path(target).name == "metrics.json":
            raise OSError("crashed before the rename")
        replace_file(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_metrics)
    config = tiny_config(steps=2)
    with pytest.raises(OSError, match="crashed before the rename"):
        train(config)
    monkeypatch.undo()
    out = Path(config.out)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "checkpoint.pt",
        "checkpoint_best.pt",
    ]
    resumed = train(replace(config, resume=True))
    assert resumed.metrics["steps"] == 2 and not resumed.already_finished
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_in_process_resume_is_exact(tiny_config, tmp_path):
    """Stopping after any checkpoint and resuming gives the same parameters, bit for bit."""
    train(tiny_config(balancer="coarse-to-fine", steps=6, out=str(tmp_path / "a")))
    part = tiny_config(
        balancer="coarse-to-fine", steps=6, out=str(tmp_path / "b"), checkpoint_every=1
    )
    trainer = Trainer(part, Path(part.out), None)
    Path(part.out).mkdir()
    trainer.total_steps = 4  # stop early, like a killed run, after checkpoint 4
    for x, seeds in trainer.batches():
        trainer.train_step(x, seeds)
        trainer.save(Path(part.out) / "checkpoint.pt")
    train(replace(part, resume=True))
    _assert_same_parameters(tmp_path / "a", tmp_path / "b")


def _assert_same_parameters(a, b):
    left = torch.load(Path(a) / "checkpoint.pt", weights_only=True)
    right = torch.load(Path(b) / "checkpoint.pt", weights_only=True)
    assert left["step"] == right["step"]
    for name, value in left["model"].items():
        assert torch.equal(value, right["model"][name]), name
    assert json.dumps(left["balancer"], default=str) == json.dumps(right["balancer"], default=str)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["--resume -o", "the same command line"])
def test_sigkill_and_resume_is_bit_identical(test_images, tmp_path, form):
    """A run killed with SIGKILL mid-training and resumed ends with identical parameters,
    resumed by ``--resume -o OUT`` or by the command that started it with ``--resume``."""
    common = [
        "-d",
        str(test_images),
        "--N",
        "8",
        "--M",
        "8",
        "--batch-size",
        "2",
        "--steps",
        "14",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "5",
        "--balancer",
        "coarse-to-fine",
        "--threads",
        "1",
        "--no-progress",
        "--no-final-eval",
    ]
    command = [sys.executable, "-m", "moopt_lic.train", *common]
    subprocess.run([*command, "-o", str(tmp_path / "full")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", killed_before_checkpoint(8), *common, "-o", str(killed)],
        capture_output=True,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    step_at_kill = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert step_at_kill == 7
    same = form == "the same command line"
    again = [*common, "-o", str(killed)] if same else ["-o", str(killed)]
    resumed = subprocess.run(
        [sys.executable, "-m", "moopt_lic.train", *again, "--resume", "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_parameters(tmp_path / "full", killed)


def test_nan_loss_stops_naming_step_and_objective(tiny_config, monkeypatch):
    calls = {"n": 0}
    original = Distortion.__call__

    def poisoned(self, batch):
        calls["n"] += 1
        value = original(self, batch)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(Distortion, "__call__", poisoned)
    config = tiny_config(balancer="weighted-sum", steps=5, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss 'distortion' is nan"):
        train(config)
    saved = torch.load(Path(config.out) / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 2  # the last good state is kept


@pytest.mark.parametrize("balancer", ["weighted-sum", "eq-qp"])
def test_nan_gradient_names_the_objective(tiny_config, monkeypatch, balancer):
    original = Distortion.__call__

    def bad_gradient(self, batch):
        value = original(self, batch)
        zero = batch.output["x_hat"].sum() * 0  # finite value, d sqrt(u)/du at 0 is ∞
        return value + 0 * torch.sqrt(zero)

    monkeypatch.setattr(Distortion, "__call__", bad_gradient)
    with pytest.raises(TrainingDiverged, match=r"step 1: the gradient of .*'distortion'.* not fin"):
        train(tiny_config(balancer=balancer, steps=2))


def test_init_from_starts_from_those_weights(tiny_config, tmp_path):
    source = train(tiny_config(steps=2, out=str(tmp_path / "source")))
    config = tiny_config(
        balancer="eq-qp",
        init_from=str(source.out / "checkpoint.pt"),
        out=str(tmp_path / "fine"),
        seed=7,
    )
    trainer = Trainer(config, Path(config.out), None)
    expected = torch.load(source.out / "checkpoint.pt", weights_only=True)["model"]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    wrong = tiny_config(
        init_from=str(source.out / "checkpoint.pt"), N=16, out=str(tmp_path / "wrong")
    )
    with pytest.raises(InputError, match="does not fit"):
        Trainer(wrong, Path(wrong.out), None)


def test_default_run_shortened(tmp_path, monkeypatch):
    """The no-argument run: built-in photos, coarse-to-fine, real coding of a held-out photo."""
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(steps=2, progress=False, threads=2)
    assert config.dataset is None and config.balancer == "coarse-to-fine"
    result = train(config)
    assert result.out.parent == Path("runs")
    final = result.metrics["final_evaluation"]
    assert [image["name"] for image in final["images"]] == ["coffee"]
    assert final["bpp"] > 0 and math.isfinite(final["psnr"])


# ------------------------------------------------------------------------- bad input
def _bad_input(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "jpeg"], "argument -m/--model: invalid choice: 'jpeg'"),
        (["--balancer", "nope"], "argument --balancer: invalid choice: 'nope'"),
        (["--lambda", "0"], "--lambda must be a finite number > 0, got 0.0"),
        (["--lambda", "-1"], "--lambda must be a finite number > 0"),
        (["--patch-size", "100"], "--patch-size 100 is not a multiple of 64"),
        (["--metric", "ms-ssim"], "--metric ms-ssim needs --patch-size > 160"),
        (["--steps", "0"], "--steps must be ≥ 1"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--loss-floor", "0.5"], "--loss-floor must be ≤ 0"),
        (["--quality", "9"], "quality must be 1..8"),
    ],
)
def test_bad_flags_one_line(capsys, argv, message):
    assert message in _bad_input(capsys, argv)


@pytest.mark.parametrize("model", ["cheng2020-anchor", "elic2022-official", "bmshj2018-factorized"])
def test_every_model_is_valid_with_default_flags(model):
    from moopt_lic.config import config_from_args

    config = config_from_args(["-m", model, "--patch-size", "64"])
    assert config.model_spec.channels()[0] == 64


def _tree(folder):
    """Every file of a folder with its bytes and modification time."""
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


def _argv(test_images, out, *extra):
    return [
        "-d", str(test_images), "--N", "8", "--M", "8", "--batch-size", "2", "--threads", "1",
        "--steps", "3", "--checkpoint-every", "1", "--eval-every", "1000", "--no-final-eval",
        "--no-progress", "-o", str(out), *extra,
    ]  # fmt: skip


def test_resume_with_the_same_command_line(test_images, tmp_path, capsys):
    """The command that started a run, with --resume, continues it (runtime flags may
    differ); on a finished run it reports so and exits 0."""
    out = tmp_path / "run"
    argv = _argv(test_images, out, "--balancer", "weighted-sum", "--lambda", "0.0067")
    config = config_from_args(argv)
    trainer = Trainer(config, out, None)
    out.mkdir()
    trainer.total_steps = 2  # stopped after checkpoint 2, like a killed run
    for x, seeds in trainer.batches():
        trainer.train_step(x, seeds)
        trainer.save(out / "checkpoint.pt")
    assert main([*argv, "--resume", "--device", "cpu", "--workers", "0"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    full = tmp_path / "full"
    assert main(_argv(test_images, full, "--balancer", "weighted-sum", "--lambda", "0.0067")) == 0
    _assert_same_parameters(full, out)
    before = _tree(out)
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"the run in {out} had already finished (3 steps): nothing to train" in printed
    assert _tree(out) == before


def test_resume_refuses_flags_that_change_the_run(test_images, tmp_path, capsys):
    """Each flag whose value differs from the run's is named, as typed, old → new, with the
    way to start a new run from the weights; the run folder is left as it was."""
    out = tmp_path / "run"
    argv = _argv(test_images, out, "--balancer", "weighted-sum")
    assert main(argv) == 0
    capsys.readouterr()
    before = _tree(out)
    changed = [*argv, "--lambda", "0.1", "--balancer", "coarse-to-fine", "--final-eval"]
    changed[changed.index("--steps") + 1] = "5"
    assert main([*changed, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for part in (
        "--steps 3 → 5",
        "--balancer weighted-sum → coarse-to-fine",
        "--lambda 0.013 → 0.1",
        "--no-final-eval → --final-eval",
        f"--init-from {str(out / 'checkpoint.pt')!r}",
    ):
        assert part in err[0], err[0]
    assert "--no-progress" not in err[0] and "--threads" not in err[0]
    assert _tree(out) == before
    # a flag typed with its default value still has to be the run's: coarse-to-fine is the
    # default, the run's balancer is the weighted sum
    assert main(["-o", str(out), "--resume", "--balancer", "coarse-to-fine"]) == 2
    assert "--balancer weighted-sum → coarse-to-fine" in capsys.readouterr().err
    # the same through the Python API: fields set to something other than their default
    with pytest.raises(InputError, match=r"--lambda 0.013 → 0.1.*--init-from"):
        train(replace(config_from_args(argv), lmbda=0.1, resume=True))
    assert train(TrainConfig(out=str(out), resume=True, progress=False)).already_finished
    assert _tree(out) == before


def test_typed_flags_are_named_as_typed():
    typed = typed_flags(["-m", "mbt2018", "--lambda=0.1", "--no-progress", "-o", "x"])
    assert typed == {"model": "-m", "lmbda": "--lambda", "progress": "--no-progress", "out": "-o"}


def test_ms_ssim_needs_large_evaluation_images(tiny_config, test_images):
    config = tiny_config(metric="ms-ssim", patch_size=192, eval_dataset=str(test_images))
    with pytest.raises(InputError, match=r"evaluation image .* MS-SSIM's five scales need"):
        Trainer(config, Path(config.out), None)


def test_ms_ssim_training_and_data_workers(tiny_config, test_images, tmp_path):
    """MS-SSIM distortion on 192-pixel crops, batches from a worker process, same as inline."""
    big = tmp_path / "big"
    big.mkdir()
    coffee = next(test_images.glob("coffee*"))
    (big / coffee.name).write_bytes(coffee.read_bytes())
    config = dict(
        metric="ms-ssim", patch_size=192, batch_size=1, steps=2, eval_dataset=str(big), lmbda=5.0
    )
    inline = train(tiny_config(**config, out=str(tmp_path / "inline")))
    train(tiny_config(**config, workers=1, out=str(tmp_path / "workers")))
    assert inline.metrics["best_validation"]["loss"] > 0
    _assert_same_parameters(tmp_path / "inline", tmp_path / "workers")


def test_bad_folders_one_line(capsys, tmp_path, test_images):
    assert "does not exist" in _bad_input(capsys, ["-d", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "holds no images" in _bad_input(capsys, ["-d", str(tmp_path / "empty")])
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in sorted(test_images.glob("*.png")):
        (broken / source.name).write_bytes(source.read_bytes())
    (broken / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    err = _bad_input(capsys, ["-d", str(broken), "-o", str(tmp_path / "o")])
    assert "cannot read image" in err and "zz_corrupt.png" in err
    assert not (tmp_path / "o").exists()  # failed before any work


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "moopt_lic.train", "-d", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"moopt_lic.train: error: dataset folder {str(tmp_path / 'nope')!r} does not exist"
    ]


def test_package_train_is_the_function_after_the_cli_is_imported():
    import moopt_lic
    import moopt_lic.cli

    assert callable(moopt_lic.train) and moopt_lic.train.__module__ == "moopt_lic.trainer"
