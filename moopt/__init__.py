"""moopt: balance the gradients of competing objectives as multi-objective optimization.

The flow of one training step: the k objective values (and, for Gram-based balancers, the k × k Gram
matrix of their gradients) go into [`Balancer.weights`][moopt.Balancer.weights], which returns the
weights ``w``; the update direction is ``Σ_i w_i ∇L_i``; after the optimizer step,
[`Balancer.update`][moopt.Balancer.update] gets the new losses. The core works on small NumPy arrays
and never imports a deep-learning framework; [`moopt.pytorch`][moopt.pytorch] is the PyTorch glue.
"""

from moopt.balancers import (
    AlignedMTLBalancer,
    Balancer,
    CAGradBalancer,
    CoarseToFineBalancer,
    ConFIGBalancer,
    DualProjBalancer,
    DWABalancer,
    EqQPBalancer,
    FairGradBalancer,
    GradNormBalancer,
    GradVacBalancer,
    IMTLGBalancer,
    MGDABalancer,
    NashMTLBalancer,
    PCGradBalancer,
    RLWBalancer,
    STCHBalancer,
    TargetBalancer,
    UncertaintyBalancer,
    UPGradBalancer,
    WeightedSumBalancer,
)
from moopt.objectives import CallableObjective, Objective
from moopt.solvers import dual_cone_weights, eq_qp_weights, mgda_weights

__all__ = [
    "AlignedMTLBalancer",
    "Balancer",
    "CAGradBalancer",
    "CallableObjective",
    "CoarseToFineBalancer",
    "ConFIGBalancer",
    "DWABalancer",
    "DualProjBalancer",
    "EqQPBalancer",
    "FairGradBalancer",
    "GradNormBalancer",
    "GradVacBalancer",
    "IMTLGBalancer",
    "MGDABalancer",
    "NashMTLBalancer",
    "Objective",
    "PCGradBalancer",
    "RLWBalancer",
    "STCHBalancer",
    "TargetBalancer",
    "UPGradBalancer",
    "UncertaintyBalancer",
    "WeightedSumBalancer",
    "dual_cone_weights",
    "eq_qp_weights",
    "mgda_weights",
]

__version__ = "0.1.0"
