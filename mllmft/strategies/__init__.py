"""Tuning strategies; each is chosen by name through ``conf/strategy/<name>.yaml``."""

from mllmft.strategies.anchored import EWC, AnchorPenalty
from mllmft.strategies.base import TuningStrategy
from mllmft.strategies.fixed_masks import MagnitudeMask, RandomMask
from mllmft.strategies.full import FullFineTuning
from mllmft.strategies.gradient_masks import GMT, SPU
from mllmft.strategies.hft import HFT
from mllmft.strategies.spider import SPIDER
from mllmft.strategies.zeroshot import ZeroShot

__all__ = ["EWC", "GMT", "HFT", "SPIDER", "SPU", "AnchorPenalty", "FullFineTuning", "MagnitudeMask",
           "RandomMask", "TuningStrategy", "ZeroShot"]
