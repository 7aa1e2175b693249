"""``python -m moopt_lic.compare``: BD-rate and BD-PSNR of R-D curves against an anchor.

Reads JSON files in CompressAI's ``eval_model`` layout (``python -m moopt_lic.evaluate``
writes them), computes with the ``bjontegaard`` package, for each test curve against the
first (the anchor):

* BD-rate (%): the mean rate difference at equal quality, over the quality range where the
  two curves overlap (negative: the test curve needs fewer bits);
* BD-PSNR (dB): the mean quality difference at equal rate (or BD-MS-SSIM in dB,
  ``-10·log10(1 − MS-SSIM)``, with ``--metric ms-ssim-rgb``),

each with two interpolations of the curves: ``pchip`` (piecewise cubic Hermite, monotone,
the one used in the current JVET/AOM common test conditions) and ``cubic`` (the cubic
polynomial fit of Bjøntegaard's original VCEG-M33). When the two differ by more than one
percentage point the comparison is marked unstable (a warning, and ``stable: no`` in the
table): on flat or noisy curves, such as those of codecs far from convergence, the cubic fit
can swing by orders of magnitude. A curve whose quality does not rise with its rate is
refused, unless ``--pareto-front`` drops its dominated points first (those another point of
the same curve beats in quality at no more rate; the table says how many). It writes a
Markdown and a CSV table and an R-D plot to ``--out``.

    python -m moopt_lic.compare results/ws.json results/c2f.json --out results/compare
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moopt_lic.errors import InputError

__all__ = ["Comparison", "Curve", "compare", "load_curve", "main"]

METHODS = ("pchip", "cubic")
METRICS = ("psnr-rgb", "ms-ssim-rgb")
MIN_POINTS = 4
UNSTABLE_SPREAD = 1.0
"""A BD-rate whose two interpolations differ by more than this many percentage points is flagged.

The curves are then too flat or too noisy for the number to mean much.
"""


@dataclass(frozen=True)
class Curve:
    """An R-D curve: its name and points sorted by rate (bpp, quality in dB)."""

    name: str
    bpp: np.ndarray
    quality: np.ndarray

    def pareto_front(self) -> Curve:
        """Return the curve without its dominated points.

        A point is dominated when another point of the curve has at most its rate and at
        least its quality, one of the two strictly (of identical points the first stays).
        What remains rises strictly in quality with rate, as BD-rate needs.
        """
        keep = []
        for i, (bpp, quality) in enumerate(zip(self.bpp, self.quality, strict=True)):
            beaten = (self.bpp <= bpp) & (self.quality >= quality)
            strictly = beaten & ((self.bpp < bpp) | (self.quality > quality))
            same = beaten & ~strictly
            if not strictly.any() and np.flatnonzero(same)[0] == i:
                keep.append(i)
        return Curve(self.name, self.bpp[keep], self.quality[keep])


@dataclass(frozen=True)
class Comparison:
    """A test curve against the anchor, in percent (BD-rate) and dB (BD-quality)."""

    anchor: str
    test: str
    bd_rate: dict[str, float]  # by interpolation method
    bd_quality: dict[str, float]
    overlap_db: tuple[float, float]  # the quality range both curves cover
    dropped: tuple[int, int] = (0, 0)  # dominated points left out (anchor, test)

    @property
    def interpolation_spread(self) -> float:
        """|BD-rate pchip − BD-rate cubic| in percentage points."""
        return abs(self.bd_rate["pchip"] - self.bd_rate["cubic"])

    @property
    def unstable(self) -> bool:
        """Whether the interpolations disagree by too much for the BD-rate to mean much.

        That is, by more than [`UNSTABLE_SPREAD`][moopt_lic.compare.UNSTABLE_SPREAD] points.
        """
        return not self.interpolation_spread <= UNSTABLE_SPREAD


def _quality_db(values: list[float], metric: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if metric == "ms-ssim-rgb":
        return -10 * np.log10(1 - array)
    return array


def load_curve(path: str | Path, metric: str = "psnr-rgb") -> Curve:
    """Read one curve from a CompressAI-layout JSON file.

    Raises
    ------
    InputError
        If the file is missing, not JSON, lacks ``results.bpp`` or the metric, or has fewer
        than four finite points.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"results file {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text())
        results = data["results"]
        bpp, quality = results["bpp"], results[metric]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(
            f"{str(file)!r} is not in CompressAI's eval_model layout with results.bpp and "
            f"results.{metric} ({type(error).__name__}: {error})"
        ) from None
    points = [
        (float(b), float(q))
        for b, q in zip(bpp, quality, strict=True)
        if b is not None and q is not None and math.isfinite(b) and math.isfinite(q)
    ]
    if len(points) < MIN_POINTS:
        raise InputError(
            f"{str(file)!r} has {len(points)} R-D point(s) with {metric}; BD-rate needs at "
            f"least {MIN_POINTS}"
        )
    points.sort()
    name = str(data.get("name") or file.stem)
    return Curve(
        name, np.array([p[0] for p in points]), _quality_db([p[1] for p in points], metric)
    )


def compare(anchor: Curve, test: Curve, *, pareto_front: bool = False) -> Comparison:
    """BD-rate and BD-quality of ``test`` against ``anchor`` with both interpolations.

    Parameters
    ----------
    anchor, test
        The curves, points sorted by rate.
    pareto_front
        Compare the curves' Pareto fronts
        ([`Curve.pareto_front`][moopt_lic.compare.Curve.pareto_front]): their dominated points are
        left out, and counted in [`Comparison.dropped`][moopt_lic.compare.Comparison].

    Raises
    ------
    InputError
        If a curve's quality does not rise with its rate, a Pareto front keeps fewer than four
        points, or the curves do not overlap in quality (BD-rate is then undefined) or in rate.
    """
    import bjontegaard

    dropped = (0, 0)
    if pareto_front:
        fronts = anchor.pareto_front(), test.pareto_front()
        dropped = (len(anchor.bpp) - len(fronts[0].bpp), len(test.bpp) - len(fronts[1].bpp))
        anchor, test = fronts
        for curve in fronts:
            if len(curve.bpp) < MIN_POINTS:
                raise InputError(
                    f"the Pareto front of {curve.name!r} keeps {len(curve.bpp)} point(s); "
                    f"BD-rate needs at least {MIN_POINTS}"
                )
    for curve in (anchor, test):
        if not np.all(np.diff(curve.quality) > 0):
            points = ", ".join(
                f"{b:.3f} bpp/{q:.2f} dB" for b, q in zip(curve.bpp, curve.quality, strict=True)
            )
            raise InputError(
                f"the curve {curve.name!r} is not monotonic (its quality does not rise with "
                f"its rate: {points}); "
                f"BD-rate needs monotonic curves (train longer, or compare the Pareto fronts: "
                f"--pareto-front)"
            )
    low = max(anchor.quality.min(), test.quality.min())
    high = min(anchor.quality.max(), test.quality.max())
    if low >= high:
        raise InputError(
            f"the curves {anchor.name!r} ({anchor.quality.min():.2f}–{anchor.quality.max():.2f} "
            f"dB) and {test.name!r} ({test.quality.min():.2f}–{test.quality.max():.2f} dB) do "
            f"not overlap in quality: BD-rate is undefined (extend the λ grid)"
        )
    if max(anchor.bpp.min(), test.bpp.min()) >= min(anchor.bpp.max(), test.bpp.max()):
        raise InputError(
            f"the curves {anchor.name!r} and {test.name!r} do not overlap in rate: BD-PSNR is "
            f"undefined (extend the λ grid)"
        )
    rates, qualities = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its partial-overlap warning: we report the range
        for method in METHODS:
            args = (anchor.bpp, anchor.quality, test.bpp, test.quality)
            rates[method] = float(
                bjontegaard.bd_rate(*args, method=method, require_matching_points=False)
            )
            qualities[method] = float(
                bjontegaard.bd_psnr(*args, method=method, require_matching_points=False)
            )
    overlap = (float(low), float(high))
    return Comparison(anchor.name, test.name, rates, qualities, overlap, dropped)


def table(comparisons: list[Comparison], metric: str) -> list[dict[str, Any]]:
    """Return the rows of the Markdown and CSV tables."""
    unit = "PSNR" if metric == "psnr-rgb" else "MS-SSIM"
    return [
        {
            "anchor": c.anchor,
            "test": c.test,
            "BD-rate pchip (%)": round(c.bd_rate["pchip"], 3),
            "BD-rate cubic (%)": round(c.bd_rate["cubic"], 3),
            f"BD-{unit} pchip (dB)": round(c.bd_quality["pchip"], 4),
            f"BD-{unit} cubic (dB)": round(c.bd_quality["cubic"], 4),
            "overlap (dB)": f"{c.overlap_db[0]:.2f}–{c.overlap_db[1]:.2f}",
            "stable": "no" if c.unstable else "yes",
            "dropped points (anchor, test)": f"{c.dropped[0]}, {c.dropped[1]}",
        }
        for c in comparisons
    ]


def _markdown(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines)


def plot(curves: list[Curve], path: Path, metric: str) -> None:
    """Draw the R-D curves to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for curve in curves:
        axes.plot(curve.bpp, curve.quality, "o-", label=curve.name)
    axes.set_xlabel("rate (bpp)")
    axes.set_ylabel("PSNR (dB)" if metric == "psnr-rgb" else "MS-SSIM (dB)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m moopt_lic.compare",
        description="BD-rate and BD-PSNR of R-D curves against the first (the anchor).",
    )
    parser.add_argument("anchor", help="the anchor's JSON (CompressAI eval_model layout)")
    parser.add_argument("tests", nargs="+", help="the test curves' JSON files")
    parser.add_argument("-o", "--out", required=True, help="folder for table.md/.csv, rd.png")
    parser.add_argument("--metric", default="psnr-rgb", choices=METRICS)
    parser.add_argument(
        "--pareto-front",
        action="store_true",
        help="leave out each curve's dominated points (more rate for no more quality) "
        "instead of refusing a curve that is not monotonic",
    )
    args = parser.parse_args(argv)
    try:
        anchor = load_curve(args.anchor, args.metric)
        tests = [load_curve(path, args.metric) for path in args.tests]
        comparisons = [compare(anchor, t, pareto_front=args.pareto_front) for t in tests]
    except InputError as error:
        print(f"moopt_lic.compare: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(comparisons, args.metric)
    markdown = _markdown(rows)
    (out / "table.md").write_text(markdown + "\n")
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot([anchor, *tests], out / "rd.png", args.metric)
    print(markdown)
    for c in comparisons:
        if c.unstable:
            print(
                f"moopt_lic.compare: warning: {c.test} vs {c.anchor}: pchip and cubic differ by "
                f"{c.interpolation_spread:.3g} percentage points; the curves are too flat or "
                f"noisy for a stable BD-rate (pchip is the robust one; train closer to "
                f"convergence or add points)",
                file=sys.stderr,
            )
    print(f"written: {out / 'table.md'}, {out / 'table.csv'}, {out / 'rd.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
