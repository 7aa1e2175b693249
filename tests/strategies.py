"""Hypothesis strategies: gradient matrices and Gram matrices of controlled size and scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass(frozen=True)
class GradientCase:
    """k gradients (rows of ``gradients``) of dimension n, and their Gram matrix."""

    gradients: np.ndarray
    scale: float

    @property
    def gram(self) -> np.ndarray:
        gram = self.gradients @ self.gradients.T
        return 0.5 * (gram + gram.T)

    @property
    def k(self) -> int:
        return len(self.gradients)


@st.composite
def gradient_cases(
    draw: st.DrawFn,
    min_k: int = 2,
    max_k: int = 8,
    min_log10_scale: float = -6.0,
    max_log10_scale: float = 6.0,
    full_rank: bool = True,
) -> GradientCase:
    """Random gradients with per-objective magnitudes over 2 decades and an overall scale.

    ``full_rank`` draws a dimension ``n ≥ k``, so the gradients are linearly independent
    (almost surely) and both QPs have a unique solution; otherwise ``n`` may be below ``k``.
    """
    k = draw(st.integers(min_k, max_k))
    n = draw(st.integers(k, k + 8) if full_rank else st.integers(1, k + 8))
    seed = draw(st.integers(0, 2**32 - 1))
    log_scale = draw(st.floats(min_log10_scale, max_log10_scale))
    rng = np.random.default_rng(seed)
    magnitudes = 10.0 ** rng.uniform(-1.0, 1.0, size=(k, 1))
    gradients = rng.standard_normal((k, n)) * magnitudes * 10.0 ** (log_scale / 2)
    return GradientCase(gradients, 10.0**log_scale)


@st.composite
def positive_losses(draw: st.DrawFn, k: int, low: float = 1e-3, high: float = 1e3) -> np.ndarray:
    """k loss values, log-uniform in ``[low, high]``."""
    logs = draw(
        st.lists(
            st.floats(np.log10(low), np.log10(high)),
            min_size=k,
            max_size=k,
        )
    )
    return 10.0 ** np.array(logs)


permutation_seeds = st.integers(0, 2**32 - 1)


def random_permutation(k: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(k)``."""
    return np.random.default_rng(seed).permutation(k)


def gram_with_condition_number(k: int, condition: float, scale: float, seed: int) -> np.ndarray:
    """An exactly symmetric PD Gram ``U diag(λ) Uᵀ`` with eigenvalues from ``scale`` down to
    ``scale / condition``, log-spaced, and a random orthogonal ``U``."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((k, k)))
    eigenvalues = scale * np.logspace(0.0, -np.log10(condition), k)
    gram = (basis * eigenvalues) @ basis.T
    return 0.5 * (gram + gram.T)
