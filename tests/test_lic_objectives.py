"""moopt_lic.objectives: rate in bits per pixel, distortion with λ applied once."""

import math

import pytest
import torch
from pytorch_msssim import ms_ssim

from moopt import Objective
from moopt_lic import CodecBatch, Distortion, InputError, Rate


def _batch():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 8)
    likelihoods = {"y": torch.rand(2, 4, 2, 1) * 0.9 + 0.05, "z": torch.rand(2, 4, 1, 1) + 0.01}
    x_hat = (x + 0.05 * torch.randn_like(x)).requires_grad_()
    return CodecBatch(x, {"x_hat": x_hat, "likelihoods": likelihoods})


def test_objectives_are_core_objectives():
    assert isinstance(Rate(), Objective) and Rate().name == "rate"
    assert isinstance(Distortion(0.01), Objective) and Distortion(0.01).name == "distortion"


def test_rate_is_bits_per_pixel_over_every_latent():
    batch = _batch()
    bits = sum(float(-torch.log2(lk).sum()) for lk in batch.output["likelihoods"].values())
    assert math.isclose(float(Rate()(batch)), bits / (2 * 16 * 8), rel_tol=1e-6)


def test_mse_distortion_has_lambda_once():
    batch = _batch()
    mse = float(torch.mean((batch.output["x_hat"].detach() - batch.x) ** 2))
    value = Distortion(0.013)(batch).item()
    assert math.isclose(value, 0.013 * 255**2 * mse, rel_tol=1e-6)
    assert math.isclose(Distortion(0.026)(batch).item(), 2 * value, rel_tol=1e-6)


def test_ms_ssim_distortion():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 192, 192)
    x_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    value = Distortion(5.0, "ms-ssim")(CodecBatch(x, {"x_hat": x_hat}))
    assert math.isclose(float(value), 5.0 * (1 - float(ms_ssim(x_hat, x, data_range=1.0))))


@pytest.mark.parametrize("lmbda", [0.0, -0.01, float("nan"), float("inf")])
def test_lambda_must_be_positive(lmbda):
    with pytest.raises(InputError, match="must be a finite number > 0"):
        Distortion(lmbda)


def test_unknown_metric():
    with pytest.raises(InputError, match="unknown metric 'psnr'"):
        Distortion(0.01, "psnr")
