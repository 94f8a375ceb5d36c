"""scoresde: score-based diffusion models as stochastic differential equations.

Public API (see ``docs/``): the SDE families, their discrete chains, and the reverse-time
SDE / probability-flow ODE terms. Implementation lives in private-by-convention modules;
import from ``scoresde`` rather than from deep paths.
"""

from scoresde.reverse import ProbabilityFlowODE as ProbabilityFlowODE
from scoresde.reverse import ReverseSDE as ReverseSDE
from scoresde.reverse import reverse_drift as reverse_drift
from scoresde.schedules import EDMSDE as EDMSDE
from scoresde.schedules import VESDE as VESDE
from scoresde.schedules import VPSDE as VPSDE
from scoresde.schedules import CosineVPSDE as CosineVPSDE
from scoresde.schedules import DiscreteVPSDE as DiscreteVPSDE
from scoresde.schedules import SubVPSDE as SubVPSDE
from scoresde.schedules import VPFamily as VPFamily
from scoresde.sde import SDE as SDE
from scoresde.sde import DiscreteChain as DiscreteChain
from scoresde.sde import Marginal as Marginal

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPFamily",
    "VPSDE",
    "SubVPSDE",
    "CosineVPSDE",
    "DiscreteVPSDE",
    "VESDE",
    "EDMSDE",
    "DiscreteChain",
    "Marginal",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "reverse_drift",
]
