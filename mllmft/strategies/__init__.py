"""Tuning strategies; each is chosen by name through ``conf/strategy/<name>.yaml``."""

from mllmft.strategies.anchored import EWC, AnchorPenalty
from mllmft.strategies.base import TuningStrategy
from mllmft.strategies.commit import CoMMIT
from mllmft.strategies.fixed_masks import MagnitudeMask, RandomMask
from mllmft.strategies.full import FullFineTuning
from mllmft.strategies.gradient_masks import GMT, SPU
from mllmft.strategies.hft import HFT
from mllmft.strategies.model_dowser import ModelDowser
from mllmft.strategies.peft_adapters import (
    IA3,
    AdaLoRA,
    LoRA,
    PeftStrategy,
    PrefixTuning,
    PromptTuning,
    VeRA,
)
from mllmft.strategies.spider import SPIDER
from mllmft.strategies.zeroshot import ZeroShot

__all__ = [
    "EWC",
    "GMT",
    "HFT",
    "IA3",
    "SPIDER",
    "SPU",
    "AdaLoRA",
    "AnchorPenalty",
    "CoMMIT",
    "FullFineTuning",
    "LoRA",
    "MagnitudeMask",
    "ModelDowser",
    "PeftStrategy",
    "PrefixTuning",
    "PromptTuning",
    "RandomMask",
    "TuningStrategy",
    "VeRA",
    "ZeroShot",
]
