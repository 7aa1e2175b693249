"""moopt_lic.noise: training noise is a function of each sample's seed, not of the batch."""

import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior

from moopt_lic.noise import per_sample_noise


def _likelihoods(model, x, seeds):
    with per_sample_noise(seeds):
        out = model(x)
    return out


def test_a_sample_gets_the_same_noise_in_any_batch():
    """Sample b's output is identical alone, in a batch of 3, and at another position."""
    torch.manual_seed(0)
    for model in (MeanScaleHyperprior(8, 8), FactorizedPrior(8, 8)):
        model.train()
        x = torch.rand(3, 3, 64, 64)
        seeds = [11, 22, 33]
        batch = _likelihoods(model, x, seeds)
        alone = _likelihoods(model, x[1:2], [22])
        swapped = _likelihoods(model, x[[1, 0]], [22, 11])
        for name in batch["likelihoods"]:
            expected = batch["likelihoods"][name][1]
            torch.testing.assert_close(
                alone["likelihoods"][name][0], expected, rtol=1e-5, atol=1e-6
            )
            torch.testing.assert_close(
                swapped["likelihoods"][name][0], expected, rtol=1e-5, atol=1e-6
            )


def test_same_seeds_same_noise_other_seeds_other_noise():
    torch.manual_seed(0)
    model = MeanScaleHyperprior(8, 8).train()
    x = torch.rand(2, 3, 64, 64)
    first = _likelihoods(model, x, [1, 2])["x_hat"]
    torch.manual_seed(123)  # the global RNG plays no part
    second = _likelihoods(model, x, [1, 2])["x_hat"]
    third = _likelihoods(model, x, [1, 3])["x_hat"]
    assert torch.equal(first, second)
    assert torch.equal(first[0], third[0]) and not torch.equal(first[1], third[1])


def test_noise_is_uniform_and_the_patch_is_removed():
    from compressai.entropy_models import EntropyModel

    original = EntropyModel.quantize
    model = MeanScaleHyperprior(8, 8)
    values = torch.zeros(64, 8, 16, 16)
    with per_sample_noise(list(range(64))):
        noised = model.gaussian_conditional.quantize(values, "noise")
        rounded = model.gaussian_conditional.quantize(values + 0.3, "dequantize")
    assert EntropyModel.quantize is original
    assert noised.abs().max() <= 0.5 and abs(noised.mean()) < 0.01
    assert abs(noised.var() - 1 / 12) < 0.005
    assert torch.equal(rounded, torch.zeros_like(values))
