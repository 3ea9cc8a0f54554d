"""What every tuning strategy is built on: the contract (contract.py, the order of a training step),
the context a hook sees and the callback that calls the hooks on every engine (runner.py), per-tensor
statistics reduced across ranks (tensor_stats.py), θ0 beside each fragment (theta0.py) and the mask
densities logged and drawn (mask_stats.py)."""

from mllmft.strategies.core.contract import HOOKS, TuningStrategy, tensor_nbytes
from mllmft.strategies.core.runner import StepContext, StrategyRunner

__all__ = ["HOOKS", "StepContext", "StrategyRunner", "TuningStrategy", "tensor_nbytes"]
