"""Test settings: a hypothesis profile for CI (deterministic, no deadline)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# --------------------------------------------------------------------------- moopt_lic
import pytest  # noqa: E402

DATA = os.environ.get(
    "MOOPT_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


@pytest.fixture
def test_images():
    """The folder of small real photos in ../shared/data/tests (skips when absent)."""
    from pathlib import Path

    folder = Path(DATA) / "tests"
    if not folder.is_dir():
        pytest.skip(f"no test photos at {folder} (set MOOPT_DATA to the shared data folder)")
    return folder


@pytest.fixture
def tiny_config(test_images, tmp_path):
    """A few-step run of a tiny codec on the test photos; tests override what they check."""
    from moopt_lic import TrainConfig

    def make(**changes):
        values = dict(
            dataset=str(test_images),
            model="mbt2018-mean",
            N=8,
            M=8,
            patch_size=64,
            batch_size=2,
            steps=4,
            lr=1e-3,
            out=str(tmp_path / "run"),
            progress=False,
            final_eval=False,
            eval_every=1000,
            checkpoint_every=1000,
            threads=1,
        )
        values.update(changes)
        return TrainConfig(**values)

    return make
