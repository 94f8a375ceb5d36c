"""Concrete diffusion families: each is an :class:`scoresde.sde.SDE` fixed by (alpha, sigma)."""

from scoresde.schedules.ve import EDMSDE as EDMSDE
from scoresde.schedules.ve import VESDE as VESDE
from scoresde.schedules.vp import VPSDE as VPSDE
from scoresde.schedules.vp import CosineVPSDE as CosineVPSDE
from scoresde.schedules.vp import DiscreteVPSDE as DiscreteVPSDE
from scoresde.schedules.vp import SubVPSDE as SubVPSDE
from scoresde.schedules.vp import VPFamily as VPFamily

__all__ = ["VPFamily", "VPSDE", "SubVPSDE", "CosineVPSDE", "DiscreteVPSDE", "VESDE", "EDMSDE"]
