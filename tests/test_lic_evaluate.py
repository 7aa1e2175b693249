"""moopt_lic.evaluate: real coding of images with checkpoints, in CompressAI's JSON layout."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from moopt_lic import load_model
from moopt_lic.checkpoint import atomic_save
from moopt_lic.codec import crop_padding, pad_image
from moopt_lic.evaluate import evaluate, main
from moopt_lic.models import ModelSpec, build_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two small codecs, the second with 4× larger latents (more bits), as checkpoints."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        spec = ModelSpec("mbt2018-mean", N=8, M=8)
        model = build_model(spec)
        with torch.no_grad():
            model.g_a[-1].weight *= 1 + 3 * seed
        state = {"model": model.state_dict(), "model_spec": spec.to_dict()}
        atomic_save(state, folder / f"c{seed}.pt")
        paths.append(folder / f"c{seed}.pt")
    return paths


def _independent_psnr(path, image_path):
    """Code the image with compressai's own calls and compute PSNR on 8-bit-free floats."""
    model = load_model(path)
    rgb = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float64) / 255
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    padded, padding = pad_image(x, 64)
    with torch.no_grad():
        encoded = model.compress(padded)
        decoded = model.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    x_hat = crop_padding(decoded, padding).clamp(0, 1)[0].permute(1, 2, 0).double().numpy()
    mse = np.mean((x_hat - rgb) ** 2)
    nbytes = sum(len(s) for strings in encoded["strings"] for s in strings)
    return 10 * math.log10(1 / mse), 8 * nbytes / (rgb.shape[0] * rgb.shape[1])


def test_layout_numbers_and_order(checkpoints, test_images):
    report = evaluate(checkpoints, test_images, per_image=True)
    assert set(report["results"]) == {
        "psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"
    }  # fmt: skip
    assert report["checkpoints"] == [str(p) for p in checkpoints]
    assert all(len(v) == 2 for v in report["results"].values())
    for index, path in enumerate(checkpoints):
        rows = report["per_image"][index]
        assert len(rows) == 4
        for row in rows:
            psnr, bpp = _independent_psnr(path, row["image"])
            assert row["bpp"] == pytest.approx(bpp, rel=1e-12)  # 8 × bytes / pixels
            assert row["psnr"] == pytest.approx(psnr, abs=1e-3)
        assert report["results"]["psnr-rgb"][index] == pytest.approx(
            np.mean([r["psnr"] for r in rows])
        )
        big = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
        assert len(big) == 1  # only coffee_256x256 is larger than 160 pixels
        assert report["results"]["ms-ssim-rgb"][index] == pytest.approx(big[0])
        assert report["decode_check"][index]["ok"]
    assert report["results"]["bpp"][0] < report["results"]["bpp"][1]  # in the order given


def test_cli_writes_json_for_compressai_plot(checkpoints, test_images, tmp_path, capsys):
    out = tmp_path / "r" / "curve.json"
    code = main([*map(str, checkpoints), "-d", str(test_images), "-o", str(out), "--name", "x"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["name"] == "x" and len(data["results"]["bpp"]) == 2
    assert "bpp" in capsys.readouterr().err


def test_decode_mismatch_is_reported(checkpoints, test_images, capsys):
    code = main([str(checkpoints[0]), "-d", str(test_images), "--tolerance", "-1"])
    assert code == 1
    assert "differs from the model's reconstruction" in capsys.readouterr().err


def test_a_nan_decode_of_one_image_fails_the_check(checkpoints, test_images, monkeypatch):
    """A decoded image with NaN pixels (a broken bitstream) is a mismatch, not a pass.

    ``max`` over rows with a NaN mismatch would silently skip it; the check must not.
    """
    import dataclasses

    import moopt_lic.codec as codec_module

    real = codec_module.code_image
    calls = []

    def broken_second_image(model, x, multiple):
        coded = real(model, x, multiple)
        calls.append(1)
        if len(calls) == 2:
            x_hat = coded.x_hat.clone()
            x_hat[..., 0, 0] = float("nan")
            coded = dataclasses.replace(coded, x_hat=x_hat)
        return coded

    monkeypatch.setattr(codec_module, "code_image", broken_second_image)
    report = evaluate(checkpoints[:1], test_images, per_image=True)
    check = report["decode_check"][0]
    assert not check["ok"] and math.isinf(check["max_abs_difference"])
    assert check["image"] == report["per_image"][0][1]["image"]


def test_decode_mismatch_values():
    """∞ for any NaN/∞ on either side, else the largest absolute difference."""
    from moopt_lic.evaluate import decode_mismatch

    a = torch.zeros(1, 3, 4, 4)
    b = a.clone()
    b[0, 1, 2, 3] = 0.25
    assert decode_mismatch(a, b) == 0.25
    for bad in (float("nan"), float("inf")):
        c = a.clone()
        c[0, 0, 0, 0] = bad
        assert decode_mismatch(c, a) == math.inf and decode_mismatch(a, c) == math.inf


def test_deterministic_convolutions_sets_and_restores_cudnn_flags():
    """On a CUDA device the block runs with deterministic cuDNN; the flags come back after."""
    from moopt_lic.codec import deterministic_convolutions

    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    with deterministic_convolutions(torch.device("cpu")):
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
    torch.backends.cudnn.benchmark = True
    try:
        with deterministic_convolutions(torch.device("cuda")):
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark and (torch.backends.cudnn.deterministic == before[0])
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def test_errors_are_one_line(checkpoints, test_images, tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cases = [
        ([str(tmp_path / "missing.pt"), "-d", str(test_images)], "does not exist"),
        ([str(tmp_path / "junk.pt"), "-d", str(test_images)], "cannot read checkpoint"),
        ([str(checkpoints[0]), "-d", str(tmp_path / "none")], "does not exist"),
    ]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    cases.append(([str(checkpoints[0]), "-d", str(broken)], "cannot read image"))
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_evaluating_does_not_load_the_trainer():
    """The evaluate command needs no training code: neither it nor the package imports it."""
    code = "import sys, moopt_lic.evaluate\nassert 'moopt_lic.trainer' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
