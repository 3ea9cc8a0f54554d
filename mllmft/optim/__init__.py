"""Optimizers beyond torch's, usable as ``module.optimizer`` (a ``_partial_`` config) with any strategy."""

from mllmft.optim.mofo import MoFO

__all__ = ["MoFO"]
