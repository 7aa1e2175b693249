"""The public names, the typing marker, and a core that needs no deep-learning framework."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import moopt
import moopt_lic

ROOT = Path(__file__).resolve().parent.parent


def test_public_names():
    from moopt import (  # noqa: F401
        Balancer,
        CoarseToFineBalancer,
        EqQPBalancer,
        MGDABalancer,
        WeightedSumBalancer,
    )
    from moopt.solvers import eq_qp_weights, mgda_weights  # noqa: F401

    for name in moopt.__all__:
        assert getattr(moopt, name).__doc__, f"moopt.{name} has no docstring"


def test_core_does_not_import_torch_or_compressai():
    """Importing the core and running every balancer loads neither torch nor compressai."""
    code = (
        "import sys, moopt, moopt.solvers\n"
        "g = [[1.0, 0.2], [0.2, 2.0]]\n"
        "for b in (moopt.MGDABalancer(), moopt.EqQPBalancer(), moopt.UPGradBalancer(),\n"
        "          moopt.DualProjBalancer(), moopt.PCGradBalancer(), moopt.GradVacBalancer(),\n"
        "          moopt.ConFIGBalancer()):\n"
        "    b.weights([1.0, 2.0], g)\n"
        "c = moopt.CoarseToFineBalancer(2); c.weights([1.0, 2.0]); c.update([0.9, 1.9])\n"
        "moopt.WeightedSumBalancer([1, 1]).weights([1, 1])\n"
        "bad = [m for m in ('torch', 'compressai', 'cvxpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_typed_packages():
    assert resources.files(moopt).joinpath("py.typed").is_file()
    assert resources.files(moopt_lic).joinpath("py.typed").is_file()


def test_adapter_package_is_importable():
    assert moopt_lic.__doc__


def test_every_package_is_distributed():
    """The wheel holds every package of the source tree, subpackages such as moopt.pytorch too."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = pytest.importorskip("setuptools")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    distributed = set(setuptools.find_packages(str(ROOT), include=include))
    in_tree = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("moopt", "moopt_lic")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert "moopt.pytorch" in in_tree
    assert in_tree <= distributed, sorted(in_tree - distributed)


def test_adapter_public_names():
    """Every name of moopt_lic.__all__ resolves, the trainer's too, which load on first use."""
    for name in moopt_lic.__all__:
        assert getattr(moopt_lic, name).__doc__, f"moopt_lic.{name} has no docstring"
    from moopt_lic import TrainingDiverged, TrainResult, train  # noqa: F401
    from moopt_lic.trainer import resolve_device  # noqa: F401
