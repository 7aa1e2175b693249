"""The [`Balancer`][moopt.Balancer] interface shared by every gradient-balancing method."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from numpy.typing import ArrayLike

from moopt.validation import FloatArray, as_finite_vector, as_gram

__all__ = ["Balancer"]


def plain_floor(floor: float | FloatArray) -> float | list[float]:
    """Return a loss floor setting as plain Python values, for ``repr`` and state dicts."""
    return floor if isinstance(floor, float) else [float(x) for x in floor]


class Balancer(abc.ABC):
    """Abstract base of every balancer: turns k objective values into k gradient weights.

    One training step with a balancer reads:

    ```python
    w = balancer.weights(losses, gram)   # gram only if balancer.requires_gram
    # .grad = Σ_i w_i ∇L_i, then optimizer.step()
    balancer.update(new_losses)          # the losses on the same batch after the step
    ```

    The weights apply to the *raw* objective gradients ``∇L_i``: the update direction is
    ``d = Σ_i w_i ∇L_i``; they sum to 1 where the class declares ``weights_sum_to_one``
    (all but the fixed weights of [`WeightedSumBalancer`][moopt.WeightedSumBalancer], targets
    and a few methods that keep their authors' scale). Inputs are validated before any work;
    a bad input raises
    [`TypeError`](https://docs.python.org/3/library/exceptions.html#TypeError) or
    [`ValueError`](https://docs.python.org/3/library/exceptions.html#ValueError) naming the
    argument.

    Attributes
    ----------
    requires_gram : bool
        Whether [`weights`][moopt.Balancer.weights] needs the ``k × k`` Gram matrix
        ``Q_ij = ∇L_iᵀ∇L_j`` (and so all k gradients) or only the k loss values.
    weights_sum_to_one : bool
        Whether the weights always sum to 1 (a convex or affine combination of the raw
        gradients); false for fixed weights and for targets, which keep the base's ``Σ|w|``.
    requires_update : bool
        Whether [`update`][moopt.Balancer.update] learns from the post-step losses (the
        coarse-to-fine balancer); when false, the extra forward pass that computes them can be
        skipped.
    """

    requires_gram: bool
    requires_update: bool = False
    weights_sum_to_one: bool = True

    @property
    def num_objectives(self) -> int | None:
        """The number of objectives ``k`` this balancer is fixed to, or None if any ``k`` works."""
        return None

    def weights(self, losses: ArrayLike, gram: ArrayLike | None = None) -> FloatArray:
        """Return the weights of the raw objective gradients for this step.

        Parameters
        ----------
        losses : array_like
            The k current objective values ``L_i``.
        gram : array_like, optional
            The ``k × k`` Gram matrix of the raw gradients ``∇L_i``; required when
            [`requires_gram`][moopt.Balancer] is true, checked but unused otherwise.

        Returns
        -------
        numpy.ndarray
            Float64 weights ``w`` of shape ``(k,)``; the update direction is ``Σ_i w_i ∇L_i``.

        Raises
        ------
        TypeError
            If an argument is not an array-like of real numbers.
        ValueError
            If ``losses`` is empty, has the wrong length or is not finite, or ``gram`` is
            missing (when required), of the wrong shape, not finite, not symmetric or not
            positive semi-definite.
        """
        checked_losses = as_finite_vector(losses, "losses", self.num_objectives)
        checked_gram = None
        if self.requires_gram or gram is not None:
            checked_gram = as_gram(gram, len(checked_losses))
        return self._weights(checked_losses, checked_gram)

    def update(self, new_losses: ArrayLike) -> None:
        """Tell the balancer the objective values after the optimizer step.

        ``new_losses`` are the k objectives evaluated on the same batch at the new
        parameters. Stateless balancers only check them; stateful ones learn from them.

        Parameters
        ----------
        new_losses : array_like
            The k objective values after the step.

        Raises
        ------
        TypeError, ValueError
            If ``new_losses`` is not a finite vector of the right length, or (stateful
            balancers) no [`weights`][moopt.Balancer.weights] call came before.
        """
        self._update(as_finite_vector(new_losses, "new_losses", self.num_objectives))

    def state_dict(self) -> dict[str, Any]:
        """Return the balancer's configuration and state as plain Python and NumPy values.

        Loading it with [`load_state_dict`][moopt.Balancer.load_state_dict] into a balancer of the
        same class continues exactly as this one would have.
        """
        return {
            "balancer": type(self).__name__,
            "num_objectives": self.num_objectives,
            **self._state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the configuration and state saved by [`state_dict`][moopt.Balancer.state_dict].

        Raises
        ------
        TypeError
            If ``state`` is not a mapping.
        ValueError
            If ``state`` comes from another balancer class, is for another number of
            objectives, or misses entries.
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                f"state must be a mapping from state_dict(), got {type(state).__name__}"
            )
        name = type(self).__name__
        if state.get("balancer") != name:
            raise ValueError(
                f"state is from balancer {state.get('balancer')!r}, cannot load it into {name}"
            )
        saved_k = state.get("num_objectives")
        if self.num_objectives is not None and saved_k != self.num_objectives:
            raise ValueError(
                f"state is for {saved_k} objectives, this {name} has {self.num_objectives}"
            )
        missing = sorted(set(self._state()) - set(state))
        if missing:
            raise ValueError(f"state for {name} misses the entries {missing}")
        self._load_state(state)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self._config().items())
        return f"{type(self).__name__}({settings})"

    @abc.abstractmethod
    def _weights(self, losses: FloatArray, gram: FloatArray | None) -> FloatArray:
        """Compute the weights from validated inputs."""

    def _update(self, new_losses: FloatArray) -> None:  # noqa: B027 (stateless default)
        """Learn from validated post-step losses; stateless balancers ignore them."""

    @abc.abstractmethod
    def _config(self) -> dict[str, Any]:
        """Return the constructor arguments, for ``repr`` and the state dict."""

    def _state(self) -> dict[str, Any]:
        """Return everything `state_dict` saves besides the class name and ``k``."""
        return self._config()

    @abc.abstractmethod
    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Restore from a state dict whose class, ``k`` and keys were checked."""
