"""scoresde: score-based diffusion models as stochastic differential equations.

Public API (see ``docs/``): the SDE families, their discrete chains, and the reverse-time
SDE / probability-flow ODE terms. Implementation lives in private-by-convention modules;
import from ``scoresde`` rather than from deep paths.
"""

from scoresde.oracle import GaussianMixture as GaussianMixture
from scoresde.oracle import GaussianMixtureOracle as GaussianMixtureOracle
from scoresde.oracle import LabeledSample as LabeledSample
from scoresde.parametrization import PREDICTIONS as PREDICTIONS
from scoresde.parametrization import EDMPrecond as EDMPrecond
from scoresde.parametrization import Prediction as Prediction
from scoresde.parametrization import ScoreModel as ScoreModel
from scoresde.parametrization import conversion_coefficients as conversion_coefficients
from scoresde.parametrization import convert as convert
from scoresde.reverse import ProbabilityFlowODE as ProbabilityFlowODE
from scoresde.reverse import ReverseSDE as ReverseSDE
from scoresde.reverse import reverse_drift as reverse_drift
from scoresde.sampling import SampleResult as SampleResult
from scoresde.sampling import sample as sample
from scoresde.sampling import solvers_available as solvers_available
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
    "sample",
    "SampleResult",
    "solvers_available",
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
    "ScoreModel",
    "EDMPrecond",
    "Prediction",
    "PREDICTIONS",
    "convert",
    "conversion_coefficients",
    "GaussianMixture",
    "GaussianMixtureOracle",
    "LabeledSample",
]
