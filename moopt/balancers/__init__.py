"""The balancers: thin policies that turn objective values (and a Gram) into weights."""

from moopt.balancers.aligned_mtl import AlignedMTLBalancer
from moopt.balancers.base import Balancer
from moopt.balancers.cagrad import CAGradBalancer
from moopt.balancers.coarse_to_fine import CoarseToFineBalancer
from moopt.balancers.config import ConFIGBalancer
from moopt.balancers.dualproj import DualProjBalancer
from moopt.balancers.dwa import DWABalancer
from moopt.balancers.eq_qp import EqQPBalancer
from moopt.balancers.fairgrad import FairGradBalancer
from moopt.balancers.gradnorm import GradNormBalancer
from moopt.balancers.gradvac import GradVacBalancer
from moopt.balancers.imtl_g import IMTLGBalancer
from moopt.balancers.mgda import MGDABalancer
from moopt.balancers.nash_mtl import NashMTLBalancer
from moopt.balancers.pcgrad import PCGradBalancer
from moopt.balancers.rlw import RLWBalancer
from moopt.balancers.stch import STCHBalancer
from moopt.balancers.target import TargetBalancer
from moopt.balancers.uncertainty import UncertaintyBalancer
from moopt.balancers.upgrad import UPGradBalancer
from moopt.balancers.weighted_sum import WeightedSumBalancer

__all__ = [
    "AlignedMTLBalancer",
    "Balancer",
    "CAGradBalancer",
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
    "PCGradBalancer",
    "RLWBalancer",
    "STCHBalancer",
    "TargetBalancer",
    "UPGradBalancer",
    "UncertaintyBalancer",
    "WeightedSumBalancer",
]
