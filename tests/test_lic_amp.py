"""moopt_lic.train --amp: bfloat16 autocast on the CPU, float16 with a GradScaler (skipped
steps do not update the balancer, the scale is in the checkpoint), CUDA when present."""

from pathlib import Path

import pytest
import torch

from moopt_lic import InputError, train
from moopt_lic.amp import autocast
from moopt_lic.cli import main
from moopt_lic.models import ModelSpec, build_model, read_checkpoint
from moopt_lic.trainer import Trainer

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_entropy_models_stay_in_float32_under_autocast():
    model = build_model(ModelSpec("mbt2018-mean", N=8, M=8))
    seen = []
    model.gaussian_conditional.register_forward_hook(lambda _m, args, _o: seen.append(args))
    with autocast("cpu", "bf16"):
        output = model(torch.rand(1, 3, 64, 64))
    assert output["x_hat"].dtype == torch.bfloat16  # the transforms ran in bfloat16
    assert {a.dtype for a in seen[0] if isinstance(a, torch.Tensor)} == {torch.float32}
    assert {v.dtype for v in output["likelihoods"].values()} == {torch.float32}
    assert "__call__" not in vars(type(model.gaussian_conditional).__mro__[1])  # restored


def _partial_then_resume(config, stop):
    trainer = Trainer(config, Path(config.out), None)
    Path(config.out).mkdir()
    trainer.total_steps = stop
    for x, seeds in trainer.batches():
        trainer.train_step(x, seeds)
        trainer.save(Path(config.out) / "checkpoint.pt")
    return train(config.__class__(**{**config.to_dict(), "resume": True}))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_trains_and_resumes_exactly(tiny_config, tmp_path, amp):
    common = dict(amp=amp, balancer="coarse-to-fine", steps=6, checkpoint_every=1)
    full = train(tiny_config(**common, out=str(tmp_path / "full")))
    metrics = full.metrics
    assert metrics["amp"]["mode"] == amp
    checkpoint = read_checkpoint(full.out / "checkpoint.pt")  # weights_only, scaler included
    skipped = metrics["amp"]["skipped_steps"]
    if amp == "fp16":
        # GradScaler starts at 2^16: the first steps overflow and are skipped, the scale halves
        assert 1 <= skipped < 6 and metrics["amp"]["loss_scale"] == 2.0**16 / 2**skipped
        assert checkpoint["scaler"]["scale"] == metrics["amp"]["loss_scale"]
    else:
        assert skipped == 0 and checkpoint["scaler"] == {}
    # coarse-to-fine learns once per step that was not skipped: skipped ones left it alone
    assert checkpoint["balancer"]["adam_steps"] == 6 - skipped
    assert metrics["best_validation"]["loss"] > 0

    resumed = _partial_then_resume(tiny_config(**common, out=str(tmp_path / "part")), 3)
    assert resumed.metrics["amp"] == metrics["amp"]
    left, right = checkpoint["model"], read_checkpoint(resumed.out / "checkpoint.pt")["model"]
    assert all(torch.equal(value, right[name]) for name, value in left.items())


def test_amp_flag_values(capsys):
    assert main(["--amp", "fp8"]) == 2
    assert "argument --amp: invalid choice: 'fp8'" in capsys.readouterr().err
    with pytest.raises(InputError, match="--amp must be one of off, bf16, fp16"):
        from moopt_lic import TrainConfig

        TrainConfig(amp="half").validate()


@CUDA
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tiny_config, tmp_path, amp):
    result = train(tiny_config(amp=amp, device="cuda", steps=8, out=str(tmp_path / amp)))
    assert result.metrics["amp"]["mode"] == amp
    assert result.metrics["best_validation"]["loss"] > 0
