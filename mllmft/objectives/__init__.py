"""Training objectives: how the loss is computed from a batch (the ``objective=`` choice), orthogonal to
the tuning strategy (which parameters move and how), so that any pair composes."""

from mllmft.objectives.base import Objective
from mllmft.objectives.grpo import GRPO
from mllmft.objectives.self_targets import SelfTargets
from mllmft.objectives.token_weighted import ASFT, DFT, EAFT, SFT

__all__ = ["ASFT", "DFT", "EAFT", "GRPO", "SFT", "Objective", "SelfTargets"]
