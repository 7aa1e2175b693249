"""The small-scale reproduction's report: what it compares and what it says is missing."""

import argparse
import json

import pytest
import reproduce_rd
from protocol import Run


def _coded(folder, bpp, psnr, lmbda):
    folder.mkdir(parents=True, exist_ok=True)
    result = {"bpp": bpp, "psnr": psnr, "max_decode_mismatch": 0.0, "train_seconds": 2.0,
              "effective_lambda": lmbda}  # fmt: skip
    (folder / "evaluation.json").write_text(json.dumps(result))


@pytest.fixture
def args(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce_rd, "plots", lambda args, results: None)
    return argparse.Namespace(out=tmp_path, arms=reproduce_rd.DEFAULT_ARMS, scale="small",
                              label="cpu")  # fmt: skip


def test_the_noise_floor_is_seed_1s_bd_rate_against_seed_0s_and_missing_arms_are_named(args):
    """Seed 1's anchors at 5 % more rate for the same PSNR read +5.00 % on both λ sets; an
    arm with no coded run is "not run yet", never a number."""
    for seed, scale in ((0, 1.0), (1, 1.05)):
        for i, lmbda in enumerate(reproduce_rd.lambdas_of("A")):
            _coded(args.out / Run("A", lmbda, seed).name, 0.1 * 2**i * scale, 28 + 3 * i, lmbda)
    lines = reproduce_rd.report(args).splitlines()
    assert "| A seed 1 vs A seed 0 (noise floor, grid λ) | – | +5.00 % | +5.00 % | yes |" in lines
    assert "| A seed 1 vs A seed 0 (noise floor, all λ) | – | +5.00 % | +5.00 % | yes |" in lines
    assert "| B vs A | 0 | not run yet (B seed 0) | |  |" in lines
    assert "| C vs A+ | 1 | not run yet (A+ seed 1) | |  |" in lines
    assert "| A-l0.0035-s1 | 0.8400 | 37.00 | 0.0035 | 2 |" in lines


def test_an_arm_is_compared_with_its_anchor_seed_by_seed_and_averaged(args):
    """B at 10 % less rate than A for the same PSNR saves 10 % at each seed: mean ± std."""
    for seed in reproduce_rd.SEEDS:
        for i, lmbda in enumerate(reproduce_rd.LAMBDAS):
            _coded(args.out / Run("A", lmbda, seed).name, 0.1 * 2**i, 28 + 3 * i, lmbda)
            _coded(args.out / Run("B", lmbda, seed).name, 0.09 * 2**i, 28 + 3 * i, lmbda)
    lines = reproduce_rd.report(args).splitlines()
    assert "| B vs A | 0 | -10.00 % | -10.00 % | yes |" in lines
    assert "| B vs A: mean ± std over seeds | – | -10.00 ± 0.00 % | | |" in lines
