"""The balancers: thin policies that turn objective values (and a Gram) into weights."""

from moopt.balancers.base import Balancer
from moopt.balancers.coarse_to_fine import CoarseToFineBalancer
from moopt.balancers.config import ConFIGBalancer
from moopt.balancers.dualproj import DualProjBalancer
from moopt.balancers.dwa import DWABalancer
from moopt.balancers.eq_qp import EqQPBalancer
from moopt.balancers.gradvac import GradVacBalancer
from moopt.balancers.mgda import MGDABalancer
from moopt.balancers.pcgrad import PCGradBalancer
from moopt.balancers.rlw import RLWBalancer
from moopt.balancers.stch import STCHBalancer
from moopt.balancers.target import TargetBalancer
from moopt.balancers.uncertainty import UncertaintyBalancer
from moopt.balancers.upgrad import UPGradBalancer
from moopt.balancers.weighted_sum import WeightedSumBalancer

__all__ = [
    "Balancer",
    "CoarseToFineBalancer",
    "ConFIGBalancer",
    "DWABalancer",
    "DualProjBalancer",
    "EqQPBalancer",
    "GradVacBalancer",
    "MGDABalancer",
    "PCGradBalancer",
    "RLWBalancer",
    "STCHBalancer",
    "TargetBalancer",
    "UPGradBalancer",
    "UncertaintyBalancer",
    "WeightedSumBalancer",
]
