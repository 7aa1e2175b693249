"""Checkpoints that cannot run code: every read is weights_only, unsafe or malformed files are
refused in one line naming the file, format-1 files get (and pass) the converter."""

import builtins
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moopt_lic import InputError, load_model, train
from moopt_lic.checkpoint import atomic_save
from moopt_lic.cli import main as train_main
from moopt_lic.convert_checkpoint import convert_checkpoint
from moopt_lic.convert_checkpoint import main as convert_main
from moopt_lic.evaluate import main as evaluate_main
from moopt_lic.models import ModelSpec, build_model, read_checkpoint
from moopt_lic.trainer import Trainer


class WritesAFile:
    """Unpickling this calls exec, which writes the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _malicious(tmp_path, kind="zip"):
    """A checkpoint-looking file whose unpickling writes ``tmp_path/pwned``."""
    marker = tmp_path / "pwned"
    spec = ModelSpec("bmshj2018-factorized", N=8, M=8)
    state = {"model": {}, "model_spec": spec.to_dict(), "step": 0, "best": WritesAFile(marker)}
    path = tmp_path / f"evil-{kind}.pt"
    if kind == "zip":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path, marker


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("kind", ["zip", "raw pickle"])
def test_a_malicious_pickle_is_refused_everywhere_and_runs_nothing(
    tmp_path, test_images, capsys, kind
):
    path, marker = _malicious(tmp_path, kind)
    with pytest.raises(InputError, match=r"refused|cannot read") as error:
        read_checkpoint(path)
    assert path.name in str(error.value) and "\n" not in str(error.value)
    assert "would build builtins.exec" in str(error.value) or "would build exec" in str(error.value)
    with pytest.raises(InputError):
        load_model(path)
    assert evaluate_main([str(path), "-d", str(test_images)]) == 2
    assert path.name in _one_line(capsys)
    argv = ["-d", str(test_images), "--N", "8", "--M", "8", "--steps", "1", "--no-progress"]
    assert train_main([*argv, "--init-from", str(path), "-o", str(tmp_path / "run")]) == 2
    assert path.name in _one_line(capsys)
    run = tmp_path / "resumed"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(path.read_bytes())
    assert train_main(["--resume", "-o", str(run)]) == 2
    assert "checkpoint.pt" in _one_line(capsys)
    # the converter refuses it too unless told the file is trusted
    assert convert_main([str(path), str(tmp_path / "new.pt")]) == 2
    message = _one_line(capsys)
    assert "--trust" in message or "cannot read" in message
    assert not (tmp_path / "new.pt").exists()
    assert not marker.exists()


def test_the_cli_refuses_it_from_the_shell_without_a_traceback(tmp_path, test_images):
    path, marker = _malicious(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "moopt_lic.evaluate", str(path), "-d", str(test_images)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moopt_lic.evaluate: error: checkpoint")
    assert not marker.exists()


def test_a_run_saves_only_what_weights_only_loads(tiny_config):
    result = train(tiny_config(steps=2, target_bpp=0.5, checkpoint_every=1, eval_every=1))
    for name in ("checkpoint.pt", "checkpoint_best.pt"):
        state = torch.load(result.out / name, weights_only=True)  # raises if anything else
        assert state["format"] == 2 and state["step"] == 2
        assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
        assert isinstance(state["balancer"]["base"]["logits"], list)
        assert isinstance(state["rng"]["numpy"]["key"], torch.Tensor)
        assert len(state["target_losses"]) == 2


def _format1(trainer):
    """The checkpoint of moopt_lic before format 2: NumPy arrays and NumPy's state tuple."""
    state = trainer.state()
    state["format"] = 1
    state["balancer"] = trainer.balancer.state_dict()  # NumPy arrays inside
    state["rng"] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    return state


def test_format1_gets_the_converter_and_resumes_exactly_after_it(tiny_config, tmp_path, capsys):
    """A format-1 file is refused with the command that converts it; converted (without
    --trust) in place, the run resumes and ends bit-identical to an uninterrupted one."""
    common = dict(balancer="coarse-to-fine", steps=6, checkpoint_every=1)
    full = train(tiny_config(**common, out=str(tmp_path / "a")))
    part = tiny_config(**common, out=str(tmp_path / "b"))
    trainer = Trainer(part, Path(part.out), None)
    Path(part.out).mkdir()
    trainer.total_steps = 4
    for x, seeds in trainer.batches():
        trainer.train_step(x, seeds)
        atomic_save(_format1(trainer), Path(part.out) / "checkpoint.pt")
    old = Path(part.out) / "checkpoint.pt"
    with pytest.raises(InputError) as error:
        read_checkpoint(old)
    message = str(error.value)
    assert "earlier moopt_lic" in message and "python -m moopt_lic.convert_checkpoint" in message
    assert train_main(["--resume", "-o", part.out]) == 2
    assert "convert_checkpoint" in _one_line(capsys)

    assert convert_main([str(old), str(old)]) == 0
    assert "format 2" in capsys.readouterr().out
    torch.load(old, weights_only=True)
    resumed = train(tiny_config(**common, out=str(tmp_path / "b"), resume=True))
    assert resumed.metrics["steps"] == 6
    left = torch.load(full.out / "checkpoint.pt", weights_only=True)
    right = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for name, value in left["model"].items():
        assert torch.equal(value, right["model"][name]), name
    assert left["balancer"] == right["balancer"]


def test_the_converter_needs_trust_for_other_objects(tmp_path):
    from fractions import Fraction

    spec = ModelSpec("bmshj2018-factorized", N=8, M=8)
    model = build_model(spec)
    state = {"model": model.state_dict(), "model_spec": spec.to_dict(), "best": Fraction(1, 3)}
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(InputError, match=r"would build fractions.Fraction.*--trust"):
        convert_checkpoint(tmp_path / "odd.pt", tmp_path / "new.pt")
    with pytest.raises(InputError, match=r"\['best'\] is a fractions.Fraction.*no safe form"):
        convert_checkpoint(tmp_path / "odd.pt", tmp_path / "new.pt", trust=True)
    state["best"] = np.float64(0.25)  # NumPy only: converted without trust
    torch.save(state, tmp_path / "numpy.pt")
    converted = convert_checkpoint(tmp_path / "numpy.pt", tmp_path / "new.pt")
    assert converted["best"] == 0.25 and type(converted["best"]) is float
    with pytest.raises(InputError, match="exists; give a new path"):
        convert_checkpoint(tmp_path / "numpy.pt", tmp_path / "odd.pt")


def _minimal(tmp_path, **changes):
    spec = ModelSpec("bmshj2018-factorized", N=8, M=8)
    state = {"model": build_model(spec).state_dict(), "model_spec": spec.to_dict(), **changes}
    path = tmp_path / "c.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_spec": {"name": "mbt2018-mean", "colour": 3}}, r"unknown key\(s\) 'colour'"),
        ({"model_spec": ["mbt2018-mean"]}, "model_spec is a list, not a dict"),
        ({"model_spec": {"name": "mbt2018-mean", "N": "8"}}, "'N' must be an integer"),
        ({"model_spec": {"name": "jpeg"}}, "unknown model 'jpeg'"),
        ({"model": [1, 2]}, "'model' is a list, not a state dict"),
        ({"model": {"w": 3}}, "'model' entry 'w' is a int, not a tensor"),
        ({"step": "3"}, "'step' is '3', not a step number"),
        ({"format": 7}, "format 7, newer than"),
    ],
)
def test_malformed_checkpoints_get_one_line(tmp_path, test_images, capsys, changes, message):
    path = _minimal(tmp_path, **changes)
    with pytest.raises(InputError, match=message):
        read_checkpoint(path)
    assert evaluate_main([str(path), "-d", str(test_images)]) == 2
    line = _one_line(capsys)
    assert "c.pt" in line and "malformed" in line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("optimizer"), r"cannot be resumed: it has no 'optimizer'.*--init-from"),
        (lambda s: s.update(config=[1]), "'config' is a list, not dict"),
        (lambda s: s["config"].update(colour=1), "unknown configuration keys: colour"),
        (lambda s: s["config"].update(lmbda="high"), "configuration 'lmbda' is 'high'"),
        (lambda s: s.update(step=True), "'step' is True, not a step number"),
        (lambda s: s["balancer"].update(balancer="MGDABalancer"), "its 'balancer' does not fit"),
        (lambda s: s["rng"].pop("numpy"), "its 'rng' does not fit"),
    ],
)
def test_a_malformed_run_checkpoint_is_refused_in_one_line(tiny_config, capsys, change, message):
    config = tiny_config(steps=2)
    train(config)
    path = Path(config.out) / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    before = path.read_bytes()
    assert train_main(["--resume", "-o", config.out]) == 2
    line = _one_line(capsys)
    assert "checkpoint.pt" in line
    with pytest.raises(InputError, match=message):
        train(tiny_config(steps=2, resume=True))
    assert path.read_bytes() == before


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    """Text and checkpoints go through one atomic write: a crash before the rename keeps the
    old file, a finished write replaces it, and no temporary file is left either way."""
    from moopt_lic import checkpoint

    path = tmp_path / "rate.json"
    checkpoint.atomic_write_text('{"rate_bpp": 0.1}', path)

    def crash(*_):
        raise OSError("crashed before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.atomic_write_text('{"rate_bpp": 0.2}', path)
    with pytest.raises(OSError):
        atomic_save({"step": 1}, tmp_path / "checkpoint.pt")
    monkeypatch.undo()
    assert path.read_text() == '{"rate_bpp": 0.1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rate.json"]
    checkpoint.atomic_write_text("é", path)
    assert path.read_text(encoding="utf-8") == "é"
