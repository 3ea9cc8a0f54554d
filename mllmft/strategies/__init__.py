"""Tuning strategies; each is chosen by name through ``conf/strategy/<name>.yaml``."""

from mllmft.strategies.base import TuningStrategy
from mllmft.strategies.full import FullFineTuning
from mllmft.strategies.zeroshot import ZeroShot

__all__ = ["FullFineTuning", "TuningStrategy", "ZeroShot"]
