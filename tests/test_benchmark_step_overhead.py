"""The interleaved per-step timing: the codec it times, the settings it writes, every method."""

import argparse

import pytest
import torch
from step_overhead import DATA, VARIANTS, Bench, measure_times, model_spec, settings, table

from moopt_lic.models import ModelSpec, build_model


def _args(**given):
    values = {"device": "cpu", "batch": 1, "patch": 64, "N": None, "M": None, "rounds": 1,
              "warmup": 0}  # fmt: skip
    return argparse.Namespace(**{**values, **given})


def test_by_default_it_times_compressai_quality_1s_size():
    assert model_spec(_args()) == ModelSpec("mbt2018-mean", quality=1)
    assert (settings(_args())["N"], settings(_args())["M"]) == (128, 192)


def test_given_n_and_m_it_times_the_codec_the_trainer_builds():
    """The same parameters, by name and shape, as ``moopt_lic.train --N 16 --M 24`` trains."""
    bench = Bench(torch.device("cpu"), 1, 64, model_spec(_args(N=16, M=24)))
    trained = build_model(ModelSpec("mbt2018-mean", N=16, M=24))
    shapes = {name: p.shape for name, p in bench.model.named_parameters()}
    assert shapes == {name: p.shape for name, p in trained.named_parameters()}
    ran = settings(_args(N=16, M=24, batch=4, patch=128, rounds=40))
    assert {key: ran[key] for key in ("model", "N", "M", "batch", "patch", "rounds")} == {
        "model": "mbt2018-mean", "N": 16, "M": 24, "batch": 4, "patch": 128, "rounds": 40
    }  # fmt: skip


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="no training photos (MOOPT_DATA)")
def test_every_variant_is_timed_and_tabled_against_the_plain_step():
    args = _args(N=8, M=8)
    times = measure_times(args)
    assert set(times) == {v.label for v in VARIANTS}
    assert all(len(t) == 1 and t[0] > 0 for t in times.values())
    rows = table(times, {}, args).splitlines()
    assert "mbt2018-mean N = 8, M = 8; batch 1 × 64²" in rows[0]
    assert rows[4].startswith("| plain (R + λD).backward() | 1.000× | 1.000× |")
    assert len(rows) == 4 + len(VARIANTS)
