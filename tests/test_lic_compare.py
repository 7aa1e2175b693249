"""moopt_lic.compare: BD-rate and BD-PSNR through the bjontegaard package."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moopt_lic import InputError
from moopt_lic.compare import Curve, compare, load_curve, main

RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.2])
PSNRS = np.array([26.0, 28.5, 31.0, 33.5, 35.0])


def _write(path, bpp, psnr, name):
    results = {"bpp": list(bpp), "psnr-rgb": list(psnr), "ms-ssim-rgb": [0.9] * len(bpp)}
    path.write_text(json.dumps({"name": name, "description": "", "results": results}))
    return path


@pytest.mark.parametrize("factor", [0.9, 0.97, 1.05])
def test_constant_rate_factor_gives_that_bd_rate(factor):
    """A curve needing factor × the bits at every quality has BD-rate (factor − 1) exactly."""
    result = compare(Curve("a", RATES, PSNRS), Curve("t", RATES * factor, PSNRS))
    for method in ("pchip", "cubic"):
        assert result.bd_rate[method] == pytest.approx(100 * (factor - 1), abs=1e-6)


def test_constant_quality_offset_gives_that_bd_psnr():
    result = compare(Curve("a", RATES, PSNRS), Curve("t", RATES, PSNRS + 0.4))
    for method in ("pchip", "cubic"):
        assert result.bd_quality[method] == pytest.approx(0.4, abs=1e-9)
        assert result.bd_rate[method] < 0


def test_cli_table_and_plot(tmp_path):
    anchor = _write(tmp_path / "a.json", RATES, PSNRS, "anchor")
    test = _write(tmp_path / "t.json", RATES * 0.9, PSNRS, "test")
    assert main([str(anchor), str(test), "-o", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| anchor | test | -10.0 | -10.0 |" in table
    assert table.rstrip().endswith("| yes | 0, 0 |")
    assert (tmp_path / "out" / "table.csv").read_text().startswith("anchor,test,BD-rate")
    assert (tmp_path / "out" / "rd.png").read_bytes()[:4] == b"\x89PNG"


def test_flat_noisy_curves_are_flagged_unstable(tmp_path, capsys):
    """Flat curves (≈ 1 dB for a 4× rate), as from codecs far from convergence: the cubic fit
    swings far from pchip and the comparison is flagged; a clean shift is not."""
    anchor = (np.array([0.4525, 0.65, 1.0264, 1.1502]), np.array([23.91, 24.70, 24.71, 24.93]))
    test = (np.array([0.4892, 0.5540, 1.4018, 1.8379]), np.array([24.27, 24.55, 24.85, 24.90]))
    flat = compare(Curve("a", *anchor), Curve("t", *test))
    assert flat.unstable and flat.interpolation_spread > 100
    assert not compare(Curve("a", RATES, PSNRS), Curve("t", RATES * 0.9, PSNRS)).unstable
    a = _write(tmp_path / "a.json", *anchor, "anchor")
    t = _write(tmp_path / "t.json", *test, "seed 1")
    assert main([str(a), str(t), "-o", str(tmp_path / "out")]) == 0
    assert "pchip and cubic differ by" in capsys.readouterr().err
    assert "| no |" in (tmp_path / "out" / "table.md").read_text()


def test_curves_that_do_not_overlap(tmp_path):
    with pytest.raises(InputError, match="do not overlap in quality"):
        compare(Curve("a", RATES, PSNRS), Curve("t", RATES, PSNRS - 20))


def test_non_monotonic_curve_is_refused():
    bent = PSNRS.copy()
    bent[2] = 27.0  # a higher rate with a lower PSNR than its neighbour
    with pytest.raises(InputError, match="'t' is not monotonic"):
        compare(Curve("a", RATES, PSNRS), Curve("t", RATES, bent))


def test_pareto_front_drops_the_dominated_points_and_compares_the_rest(tmp_path):
    """A bent curve (one point below its lower-rate neighbour) is refused as it is; on its
    Pareto front the bent point is left out and the other points give the exact BD-rate."""
    rates = np.append(RATES, 1.0)
    psnrs = np.append(PSNRS, 33.0)  # 1.0 bpp at 33.0 dB: 0.8 bpp already gives 33.5 dB
    order = np.argsort(rates)
    test = Curve("t", rates[order] * 0.9, psnrs[order])
    with pytest.raises(InputError, match=r"not monotonic.*--pareto-front"):
        compare(Curve("a", RATES, PSNRS), test)
    result = compare(Curve("a", RATES, PSNRS), test, pareto_front=True)
    assert result.dropped == (0, 1)
    assert result.bd_rate["pchip"] == pytest.approx(-10.0, abs=1e-6)
    anchor = _write(tmp_path / "a.json", RATES, PSNRS, "anchor")
    bent = _write(tmp_path / "t.json", test.bpp, test.quality, "bent")
    out = str(tmp_path / "out")
    assert main([str(anchor), str(bent), "-o", out]) == 2
    assert main([str(anchor), str(bent), "-o", out, "--pareto-front"]) == 0
    assert (tmp_path / "out" / "table.md").read_text().rstrip().endswith("| 0, 1 |")


def test_pareto_front_with_too_few_points_is_refused():
    zigzag = Curve("z", RATES, np.array([26.0, 25.0, 31.0, 30.0, 35.0]))
    with pytest.raises(InputError, match="Pareto front of 'z' keeps 3 point"):
        compare(Curve("a", RATES, PSNRS), zigzag, pareto_front=True)


_points = st.lists(
    st.tuples(st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.8]), st.sampled_from([20.0, 22.0, 25.0])),
    min_size=1,
    max_size=8,
)


@given(_points)
def test_pareto_front_properties(points):
    """The front rises strictly in rate and quality, every left-out point is dominated by a
    kept one (no more rate, no less quality), no kept point is, and the front of the front is
    itself (idempotence)."""
    points.sort()
    curve = Curve("c", np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    front = curve.pareto_front()
    assert np.all(np.diff(front.bpp) > 0) and np.all(np.diff(front.quality) > 0)
    kept = set(zip(front.bpp, front.quality, strict=True))
    for bpp, quality in points:
        if (bpp, quality) not in kept:
            assert any(b <= bpp and q >= quality for b, q in kept)
    for bpp, quality in kept:
        assert not any(b <= bpp and q >= quality and (b, q) != (bpp, quality) for b, q in points)
    again = front.pareto_front()
    np.testing.assert_array_equal(again.bpp, front.bpp)
    np.testing.assert_array_equal(again.quality, front.quality)


def test_too_few_points_and_bad_files(tmp_path, capsys):
    few = _write(tmp_path / "few.json", RATES[:3], PSNRS[:3], "few")
    with pytest.raises(InputError, match="has 3 R-D point"):
        load_curve(few)
    (tmp_path / "bad.json").write_text("{}")
    good = _write(tmp_path / "good.json", RATES, PSNRS, "good")
    for argv, message in [
        ([str(good), str(tmp_path / "bad.json")], "not in CompressAI's eval_model layout"),
        ([str(good), str(tmp_path / "none.json")], "does not exist"),
        ([str(good), str(few)], "BD-rate needs at least 4"),
    ]:
        assert main([*argv, "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_ms_ssim_in_db(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "m", "results": {
        "bpp": [0.1, 0.2, 0.3, 0.4], "ms-ssim-rgb": [0.9, 0.99, 0.999, 0.9999]}}))  # fmt: skip
    curve = load_curve(path, "ms-ssim-rgb")
    np.testing.assert_allclose(curve.quality, [10, 20, 30, 40])
