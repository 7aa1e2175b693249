"""moopt_lic.models: every zoo name builds fresh; load_model rebuilds from a checkpoint alone."""

import pytest
import torch

from moopt_lic import InputError, ModelSpec, load_model
from moopt_lic.checkpoint import atomic_save
from moopt_lic.models import MODELS, build_model, main_and_aux_parameters


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_runs(name):
    arch = MODELS[name]
    spec = ModelSpec(name, N=8, M=max(16, arch.min_m + 63) if arch.takes_m else None)
    model = build_model(spec).train()
    out = model(torch.rand(1, 3, spec.downsampling, spec.downsampling))
    assert out["x_hat"].shape == (1, 3, spec.downsampling, spec.downsampling)
    main, aux = main_and_aux_parameters(model)
    assert aux and all(p.ndim > 0 for p in aux)
    assert {id(p) for p in main}.isdisjoint(id(p) for p in aux)


def test_demo_size_without_quality():
    """No quality: the small demo size, for every architecture (ELIC needs M > 128)."""
    assert ModelSpec("mbt2018-mean").channels() == (64, 96)
    assert ModelSpec("cheng2020-attn").channels() == (64,)
    assert ModelSpec("elic2022-official").channels() == (64, 192)
    assert ModelSpec("bmshj2018-factorized", N=32).channels() == (32, 96)


def test_zoo_channels_by_quality():
    assert ModelSpec("mbt2018-mean", quality=1).channels() == (128, 192)
    assert ModelSpec("mbt2018-mean", quality=8).channels() == (192, 320)
    assert ModelSpec("mbt2018-mean", quality=1, N=8).channels() == (8, 192)
    assert ModelSpec("cheng2020-anchor", quality=1).channels() == (128,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "jpeg2000"}, "unknown model 'jpeg2000'; choose one of: bmshj2018-factorized"),
        ({"name": "mbt2018-mean", "quality": 9}, "quality must be 1..8"),
        ({"name": "mbt2018-mean", "N": 0}, "--N must be a positive channel count"),
        ({"name": "cheng2020-anchor", "M": 8}, "has no M"),
        ({"name": "elic2022-official", "M": 64}, r"needs --M ≥ 129"),
    ],
)
def test_bad_specs(kwargs, message):
    with pytest.raises(InputError, match=message):
        ModelSpec(**kwargs)


def test_load_model_round_trip(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("bmshj2018-hyperprior", N=8, M=8)
    model = build_model(spec)
    atomic_save({"model": model.state_dict(), "model_spec": spec.to_dict()}, tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt")
    assert not loaded.training
    model.eval().update(force=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["x_hat"], model(x)["x_hat"])
        assert loaded.compress(x)["strings"] == model.compress(x)["strings"]


def test_load_model_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="is not a moopt_lic checkpoint"):
        load_model(tmp_path / "foreign.pt")
