"""scoresde: score-based diffusion models as stochastic differential equations.

Public API (see ``docs/``): the SDE families, their discrete chains, and the reverse-time
SDE / probability-flow ODE terms. Implementation lives in private-by-convention modules;
import from ``scoresde`` rather than from deep paths.
"""

from scoresde.checkpoint import Checkpoint as Checkpoint
from scoresde.checkpoint import CheckpointError as CheckpointError
from scoresde.checkpoint import latest_checkpoint as latest_checkpoint
from scoresde.checkpoint import load_checkpoint as load_checkpoint
from scoresde.config import Config as Config
from scoresde.config import ConfigError as ConfigError
from scoresde.config import load_config as load_config
from scoresde.data import Baselines as Baselines
from scoresde.data import Dataset as Dataset
from scoresde.data import baselines as baselines
from scoresde.data import categorical_bits_per_dim as categorical_bits_per_dim
from scoresde.data import load_digits as load_digits
from scoresde.data import load_image_folder as load_image_folder
from scoresde.data import load_mnist_subset as load_mnist_subset
from scoresde.data import load_npz as load_npz
from scoresde.data import load_toy as load_toy
from scoresde.data import sample_toy as sample_toy
from scoresde.data import uniform_bits_per_dim as uniform_bits_per_dim
from scoresde.divergence import exact_divergence as exact_divergence
from scoresde.divergence import hutchinson_divergence as hutchinson_divergence
from scoresde.divergence import sample_probes as sample_probes
from scoresde.elbo import ELBOResult as ELBOResult
from scoresde.elbo import elbo as elbo
from scoresde.guidance import CFGModel as CFGModel
from scoresde.guidance import ClassifierGuidedModel as ClassifierGuidedModel
from scoresde.guidance import ClassifierLossOutput as ClassifierLossOutput
from scoresde.guidance import ConditionalOracleNet as ConditionalOracleNet
from scoresde.guidance import InpaintSolver as InpaintSolver
from scoresde.guidance import NoisyClassifier as NoisyClassifier
from scoresde.guidance import classifier_loss as classifier_loss
from scoresde.guidance import drop_labels as drop_labels
from scoresde.guidance import inpaint as inpaint
from scoresde.guidance import inpaint_solver as inpaint_solver
from scoresde.likelihood import ConvergenceError as ConvergenceError
from scoresde.likelihood import LikelihoodResult as LikelihoodResult
from scoresde.likelihood import decode as decode
from scoresde.likelihood import dequantize as dequantize
from scoresde.likelihood import encode as encode
from scoresde.likelihood import log_likelihood as log_likelihood
from scoresde.losses import T_SAMPLERS as T_SAMPLERS
from scoresde.losses import WEIGHTINGS as WEIGHTINGS
from scoresde.losses import LossOutput as LossOutput
from scoresde.losses import Perturbed as Perturbed
from scoresde.losses import TimeSampler as TimeSampler
from scoresde.losses import Weighting as Weighting
from scoresde.losses import dsm_loss as dsm_loss
from scoresde.losses import dsm_loss_at as dsm_loss_at
from scoresde.losses import get_t_sampler as get_t_sampler
from scoresde.losses import get_weighting as get_weighting
from scoresde.losses import perturb as perturb
from scoresde.metrics import mmd as mmd
from scoresde.metrics import sliced_wasserstein as sliced_wasserstein
from scoresde.models import MLP as MLP
from scoresde.models import UNet as UNet
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
from scoresde.selection import GridScore as GridScore
from scoresde.selection import OracleProblem as OracleProblem
from scoresde.selection import Recommendation as Recommendation
from scoresde.selection import ReferenceInfo as ReferenceInfo
from scoresde.selection import SolverReport as SolverReport
from scoresde.selection import SolverRun as SolverRun
from scoresde.selection import TunedGrid as TunedGrid
from scoresde.selection import builtin_oracle as builtin_oracle
from scoresde.selection import compare_solvers as compare_solvers
from scoresde.selection import load_grid as load_grid
from scoresde.selection import tune_grid as tune_grid
from scoresde.training import BitsPerDim as BitsPerDim
from scoresde.training import EvalResult as EvalResult
from scoresde.training import LoadedModel as LoadedModel
from scoresde.training import Trainer as Trainer
from scoresde.training import TrainResult as TrainResult
from scoresde.training import load_model as load_model
from scoresde.training import train as train

__version__ = "0.1.0"

__all__ = [
    "sample",
    "SampleResult",
    "solvers_available",
    "compare_solvers",
    "SolverReport",
    "SolverRun",
    "Recommendation",
    "ReferenceInfo",
    "tune_grid",
    "TunedGrid",
    "GridScore",
    "load_grid",
    "builtin_oracle",
    "OracleProblem",
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
    "sliced_wasserstein",
    "mmd",
    "GaussianMixtureOracle",
    "LabeledSample",
    "dsm_loss",
    "dsm_loss_at",
    "LossOutput",
    "perturb",
    "Perturbed",
    "Weighting",
    "WEIGHTINGS",
    "get_weighting",
    "TimeSampler",
    "T_SAMPLERS",
    "get_t_sampler",
    "MLP",
    "UNet",
    "Dataset",
    "load_toy",
    "sample_toy",
    "load_digits",
    "load_mnist_subset",
    "load_npz",
    "load_image_folder",
    "Baselines",
    "baselines",
    "uniform_bits_per_dim",
    "categorical_bits_per_dim",
    "log_likelihood",
    "LikelihoodResult",
    "ConvergenceError",
    "encode",
    "decode",
    "dequantize",
    "elbo",
    "ELBOResult",
    "exact_divergence",
    "hutchinson_divergence",
    "sample_probes",
    "CFGModel",
    "ClassifierGuidedModel",
    "NoisyClassifier",
    "classifier_loss",
    "ClassifierLossOutput",
    "drop_labels",
    "ConditionalOracleNet",
    "inpaint",
    "inpaint_solver",
    "InpaintSolver",
    "Config",
    "ConfigError",
    "load_config",
    "train",
    "Trainer",
    "TrainResult",
    "EvalResult",
    "BitsPerDim",
    "LoadedModel",
    "load_model",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "latest_checkpoint",
]
