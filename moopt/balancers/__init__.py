"""The balancers: thin policies that turn objective values (and a Gram) into weights."""

from moopt.balancers.base import Balancer
from moopt.balancers.coarse_to_fine import CoarseToFineBalancer
from moopt.balancers.dwa import DWABalancer
from moopt.balancers.eq_qp import EqQPBalancer
from moopt.balancers.mgda import MGDABalancer
from moopt.balancers.rlw import RLWBalancer
from moopt.balancers.stch import STCHBalancer
from moopt.balancers.target import TargetBalancer
from moopt.balancers.uncertainty import UncertaintyBalancer
from moopt.balancers.weighted_sum import WeightedSumBalancer

__all__ = [
    "Balancer",
    "CoarseToFineBalancer",
    "DWABalancer",
    "EqQPBalancer",
    "MGDABalancer",
    "RLWBalancer",
    "STCHBalancer",
    "TargetBalancer",
    "UncertaintyBalancer",
    "WeightedSumBalancer",
]
