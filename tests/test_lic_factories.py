"""Codecs of one's own: --model package.module:factory in training, checkpoints, resume,
evaluation and load_model; the padding multiple; one-line errors (tests/tiny_codecs.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_codecs
import torch

from moopt_lic import InputError, ModelSpec, TrainConfig, load_model, train
from moopt_lic.cli import main
from moopt_lic.evaluate import evaluate
from moopt_lic.evaluate import main as evaluate_main
from moopt_lic.models import build_model, read_checkpoint

TESTS = str(Path(__file__).resolve().parent)


def _argv(test_images, out, *extra):
    return [
        "-d", str(test_images), "-m", "tiny_codecs:tiny", "--N", "8", "--M", "8",
        "--batch-size", "2", "--steps", "2", "--threads", "1", "--no-progress",
        "--no-final-eval", "-o", str(out), *extra,
    ]  # fmt: skip


def test_train_evaluate_resume_and_load_a_codec_of_ones_own(test_images, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _argv(test_images, out, "--patch-size", "32", "--checkpoint-every", "1")
    assert main(argv) == 0
    capsys.readouterr()
    checkpoint = read_checkpoint(out / "checkpoint.pt")
    assert checkpoint["model_spec"] == {"name": "tiny_codecs:tiny", "quality": None, "N": 8, "M": 8}
    assert checkpoint["config"]["model"] == "tiny_codecs:tiny"
    assert ModelSpec.from_dict(checkpoint["model_spec"]).downsampling == 4  # probed

    model = load_model(out / "checkpoint.pt")
    err = capsys.readouterr().err
    assert "building the codec with tiny_codecs:tiny(N=8, M=8), imported from" in err
    assert "tiny_codecs.py" in err
    assert isinstance(model, tiny_codecs.TinyCodec) and not model.training

    report = evaluate([out / "checkpoint.pt"], test_images, per_image=True)
    assert report["decode_check"][0]["ok"]  # odd sizes (75×61) padded to multiples of 4
    assert len(report["per_image"][0]) == 4

    # the same command with --resume finds the run finished, and says which factory it calls
    assert main([*argv, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "had already finished" in captured.out
    assert "building the codec with tiny_codecs:tiny(N=8, M=8)" in captured.err


def test_resume_imports_the_factory_in_a_new_process(test_images, tmp_path):
    """A fresh interpreter rebuilds the codec from the checkpoint's name, from PYTHONPATH."""
    out = tmp_path / "run"
    config = TrainConfig(
        dataset=str(test_images), model=tiny_codecs.tiny, N=8, M=8, patch_size=32,
        batch_size=2, steps=3, checkpoint_every=1, progress=False, final_eval=False,
        threads=1, out=str(out),
    )  # fmt: skip
    assert config.model == "tiny_codecs:tiny"  # the Python API takes the factory itself
    from moopt_lic.trainer import Trainer

    trainer = Trainer(config, out, None)
    out.mkdir()
    trainer.total_steps = 2
    for x, seeds in trainer.batches():
        trainer.train_step(x, seeds)
        trainer.save(out / "checkpoint.pt")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "moopt_lic.train", "--resume", "-o", str(out)],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "building the codec with tiny_codecs:tiny(N=8, M=8)" in result.stderr
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 3
    full = train(config.__class__(**{**config.to_dict(), "out": str(tmp_path / "full")}))
    left = read_checkpoint(full.out / "checkpoint.pt")["model"]
    right = read_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.equal(value, right[name]) for name, value in left.items())


def test_padding_multiple_from_the_attribute_and_from_compressai():
    assert ModelSpec("tiny_codecs:declared").downsampling == 4
    assert ModelSpec("compressai.models:MeanScaleHyperprior", N=8, M=8).downsampling == 64
    with pytest.raises(InputError, match=r"downsampling_factor 3 does not fit"):
        ModelSpec("tiny_codecs:wrong_factor").downsampling  # noqa: B018


def _one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("no_such_module_xyz:build", [], "cannot import 'no_such_module_xyz': no module"),
        ("tiny_codecs:missing", [], "module 'tiny_codecs' (/"),
        ("tiny_codecs:NOT_CALLABLE", [], "'NOT_CALLABLE' is a int, not callable"),
        ("tiny_codecs:not_a_codec", [], "returned a Conv2d, not a compressai.models.Compression"),
        ("tiny_codecs:broken", [], "tiny_codecs:broken(N=8, M=8) raised RuntimeError: out of"),
        ("tiny_codecs:no_arguments", [], "got an unexpected keyword argument 'N'"),
        ("tiny_codecs:tiny", ["--quality", "3"], "--quality picks a CompressAI zoo size"),
        ("tiny_codecs:tiny", ["--patch-size", "30"], "not a multiple of 4"),
        ("os:getcwd", [], "'os' is a module of Python's standard library"),
        ("./mine.py:build", [], "invalid choice: './mine.py:build'"),
    ],
)
def test_factory_errors_are_one_line(test_images, tmp_path, capsys, model, extra, message):
    argv = _argv(test_images, tmp_path / "run", *extra)
    argv[argv.index("-m") + 1] = model
    line = _one_line(capsys, argv)
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_the_python_api_refuses_factories_a_checkpoint_cannot_name():
    with pytest.raises(InputError, match="no importable name"):
        TrainConfig(model=lambda N=8, M=8: tiny_codecs.TinyCodec(N, M))
    assert ModelSpec(tiny_codecs.TinyCodec).name == "tiny_codecs:TinyCodec"
    assert isinstance(build_model(ModelSpec(tiny_codecs.tiny, N=4)), tiny_codecs.TinyCodec)


def test_a_checkpoint_cannot_name_a_file_or_the_standard_library(tmp_path, test_images, capsys):
    spec = ModelSpec("tiny_codecs:tiny")
    weights = build_model(spec).state_dict()
    for name, message in [
        ("/tmp/evil.py:build", "is not package.module:factory"),
        ("os:system", "standard library"),
        ("builtins:exec", "standard library"),
    ]:
        path = tmp_path / "c.pt"
        torch.save({"model": weights, "model_spec": {"name": name}}, path)
        assert evaluate_main([str(path), "-d", str(test_images)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "c.pt" in err[0], err
        with pytest.raises(InputError, match=message):
            load_model(path)
