"""Generic numerical layer of scoresde: terms, fixed-grid solvers, time grids, one loop.

Depends on torch only (never on ``scoresde``). Typical use::

    import solvers

    term = solvers.ODETerm(lambda x, t: -x)
    ts = solvers.uniform(1.0, 0.0, 50)  # decreasing grid: integrate backwards
    sol = solvers.integrate(solvers.get_solver("euler"), term, x0, ts)
    sol.x, sol.nfe
"""

from solvers.adaptive import AdaptiveHeun as AdaptiveHeun
from solvers.adaptive import AdaptiveSolver as AdaptiveSolver
from solvers.adaptive import AdaptiveStepError as AdaptiveStepError
from solvers.adaptive import Bosh3 as Bosh3
from solvers.adaptive import Dopri5 as Dopri5
from solvers.adaptive import Dopri8 as Dopri8
from solvers.adaptive import ScipyDOP853 as ScipyDOP853
from solvers.adaptive import ScipyRK45 as ScipyRK45
from solvers.base import Solver as Solver
from solvers.base import check_solver_class as check_solver_class
from solvers.broadcast import append_dims as append_dims
from solvers.brownian import BrownianPath as BrownianPath
from solvers.brownian import GaussianNoise as GaussianNoise
from solvers.brownian import NoiseSource as NoiseSource
from solvers.brownian import PerSampleNoise as PerSampleNoise
from solvers.exponential import DDIM as DDIM
from solvers.exponential import DPMSolver2 as DPMSolver2
from solvers.exponential import DPMSolver3 as DPMSolver3
from solvers.exponential import DPMSolverPP2M as DPMSolverPP2M
from solvers.exponential import DPMSolverPP2S as DPMSolverPP2S
from solvers.exponential import DPMSolverPP3M as DPMSolverPP3M
from solvers.exponential_multistep import DEIS as DEIS
from solvers.exponential_multistep import PLMS as PLMS
from solvers.exponential_multistep import UniPC as UniPC
from solvers.integrate import NonFiniteError as NonFiniteError
from solvers.integrate import Solution as Solution
from solvers.integrate import integrate as integrate
from solvers.integrate import standard_normal_noise as standard_normal_noise
from solvers.linear_multistep import IPNDM as IPNDM
from solvers.linear_multistep import IPNDMVariable as IPNDMVariable
from solvers.ode_fixed import RK4 as RK4
from solvers.ode_fixed import EDMVariables as EDMVariables
from solvers.ode_fixed import Euler as Euler
from solvers.ode_fixed import Heun as Heun
from solvers.ode_fixed import Midpoint as Midpoint
from solvers.predictor_corrector import PredictorCorrector as PredictorCorrector
from solvers.protocols import DenoiserTermLike as DenoiserTermLike
from solvers.protocols import ODETermLike as ODETermLike
from solvers.protocols import Schedule as Schedule
from solvers.protocols import SDETermLike as SDETermLike
from solvers.registry import SOLVERS as SOLVERS
from solvers.registry import SolverInfo as SolverInfo
from solvers.registry import UnknownSolverError as UnknownSolverError
from solvers.registry import get_solver as get_solver
from solvers.registry import register as register
from solvers.registry import solvers_available as solvers_available
from solvers.sde_adaptive import GottaGoFast as GottaGoFast
from solvers.sde_adaptive import TorchSDEAdaptive as TorchSDEAdaptive
from solvers.sde_adaptive import TorchSDEEuler as TorchSDEEuler
from solvers.sde_adaptive import TorchSDEMilstein as TorchSDEMilstein
from solvers.sde_adaptive import TorchSDEReversibleHeun as TorchSDEReversibleHeun
from solvers.sde_adaptive import TorchSDESRK as TorchSDESRK
from solvers.sde_fixed import Ancestral as Ancestral
from solvers.sde_fixed import DPMSolverPP2MSDE as DPMSolverPP2MSDE
from solvers.sde_fixed import DPMSolverPP3MSDE as DPMSolverPP3MSDE
from solvers.sde_fixed import EDMStochastic as EDMStochastic
from solvers.sde_fixed import EulerMaruyama as EulerMaruyama
from solvers.sde_fixed import ReverseDiffusion as ReverseDiffusion
from solvers.terms import DenoiserTerm as DenoiserTerm
from solvers.terms import EDMVariablesTerm as EDMVariablesTerm
from solvers.terms import ODETerm as ODETerm
from solvers.terms import SDETerm as SDETerm
from solvers.terms import count_evaluations as count_evaluations
from solvers.terms import noise_to_signal as noise_to_signal
from solvers.time_grids import GRIDS as GRIDS
from solvers.time_grids import as_grid as as_grid
from solvers.time_grids import karras as karras
from solvers.time_grids import log_snr_uniform as log_snr_uniform
from solvers.time_grids import make_grid as make_grid
from solvers.time_grids import quadratic as quadratic
from solvers.time_grids import schedule_kind as schedule_kind
from solvers.time_grids import uniform as uniform

__all__ = [
    # protocols
    "ODETermLike",
    "SDETermLike",
    "Schedule",
    "DenoiserTermLike",
    # terms
    "ODETerm",
    "SDETerm",
    "DenoiserTerm",
    "EDMVariablesTerm",
    "noise_to_signal",
    "count_evaluations",
    # solver contract and the loop
    "Solver",
    "check_solver_class",
    "integrate",
    "Solution",
    "NonFiniteError",
    "standard_normal_noise",
    "append_dims",
    # solvers and registry
    "Euler",
    "EDMVariables",
    "Heun",
    "Midpoint",
    "RK4",
    "IPNDM",
    "IPNDMVariable",
    "DDIM",
    "DPMSolver2",
    "DPMSolver3",
    "DPMSolverPP2S",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "UniPC",
    "PLMS",
    "DEIS",
    "AdaptiveSolver",
    "AdaptiveStepError",
    "Dopri5",
    "Bosh3",
    "AdaptiveHeun",
    "Dopri8",
    "ScipyRK45",
    "ScipyDOP853",
    "EulerMaruyama",
    "ReverseDiffusion",
    "Ancestral",
    "EDMStochastic",
    "DPMSolverPP2MSDE",
    "DPMSolverPP3MSDE",
    "PredictorCorrector",
    "TorchSDEEuler",
    "TorchSDEMilstein",
    "TorchSDESRK",
    "TorchSDEReversibleHeun",
    "TorchSDEAdaptive",
    "GottaGoFast",
    "NoiseSource",
    "GaussianNoise",
    "PerSampleNoise",
    "BrownianPath",
    "SOLVERS",
    "register",
    "get_solver",
    "solvers_available",
    "SolverInfo",
    "UnknownSolverError",
    # time grids
    "uniform",
    "quadratic",
    "schedule_kind",
    "log_snr_uniform",
    "karras",
    "as_grid",
    "make_grid",
    "GRIDS",
]
