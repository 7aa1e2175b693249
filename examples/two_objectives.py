"""Balance two competing objectives with every moopt balancer (NumPy only, no framework).

Objective 1 pulls the parameters towards c₁, objective 2 (100 times larger, as λ·D dwarfs R
in image compression) towards c₂. Plain gradient descent follows ``Σ_i w_i ∇L_i`` with the
weights each balancer returns; the script prints where each one ends.

Run it with ``python examples/two_objectives.py``.
"""

from __future__ import annotations

import numpy as np

from moopt import (
    Balancer,
    CoarseToFineBalancer,
    EqQPBalancer,
    MGDABalancer,
    WeightedSumBalancer,
)

CENTRES = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
SCALES = np.array([1.0, 100.0])


def losses_and_gradients(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L_i = s_i (½‖θ − c_i‖² + 0.01) and their gradients (as rows)."""
    residuals = theta - CENTRES
    losses = SCALES * (0.5 * np.sum(residuals**2, axis=1) + 0.01)
    return losses, SCALES[:, None] * residuals


def train(balancer: Balancer, steps: int = 300, lr: float = 0.009) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent on Σ w_i L_i with the balancer's weights; returns (losses, weights)."""
    theta = np.array([0.0, 0.0, 1.0])
    weights = np.zeros(2)
    for _ in range(steps):
        losses, gradients = losses_and_gradients(theta)
        gram = gradients @ gradients.T if balancer.requires_gram else None
        weights = balancer.weights(losses, gram)  # losses -> (Gram) -> weights
        theta = theta - lr * (weights @ gradients)  # -> the step along Σ w_i ∇L_i
        balancer.update(losses_and_gradients(theta)[0])  # the new losses, same "batch"
    return losses_and_gradients(theta)[0], weights


def main() -> None:
    """Train with each balancer and print the final losses and weights."""
    balancers: dict[str, Balancer] = {
        "weighted sum [1, 1]": WeightedSumBalancer([1.0, 1.0]),
        "MGDA": MGDABalancer(),
        "MGDA (log-loss)": MGDABalancer("loss"),
        "EqQP (log-loss)": EqQPBalancer(),
        "coarse-to-fine": CoarseToFineBalancer(2, logit_lr=0.05, loss_floor=0.0),
    }
    start, _ = losses_and_gradients(np.array([0.0, 0.0, 1.0]))
    print(f"start: L1 = {start[0]:.4f}, L2 = {start[1]:.4f}")
    print(f"{'balancer':<22} {'L1':>8} {'L2':>9} {'w1':>7} {'w2':>7}")
    for name, balancer in balancers.items():
        losses, weights = train(balancer)
        print(f"{name:<22} {losses[0]:8.4f} {losses[1]:9.4f} {weights[0]:7.3f} {weights[1]:7.3f}")


if __name__ == "__main__":
    main()
