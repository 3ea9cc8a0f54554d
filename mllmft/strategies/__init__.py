"""Tuning strategies. Each is a plug-in: a class in its method group's folder (selective/, penalties/,
adapters/, commit/, baselines/) chosen by ``conf/strategy/<name>.yaml``, whose ``_target_`` names it in
full and whose file name is its name; core/ is what they are built on. The built-in ones are exported
here for the Python API."""

from mllmft.strategies.adapters.kore import KORE
from mllmft.strategies.adapters.lorasculpt import LoRASculpt
from mllmft.strategies.adapters.peft_adapters import (
    IA3,
    AdaLoRA,
    LoRA,
    PeftStrategy,
    PrefixTuning,
    PromptTuning,
    VeRA,
)
from mllmft.strategies.baselines.full import FullFineTuning
from mllmft.strategies.baselines.zeroshot import ZeroShot
from mllmft.strategies.commit.commit import CoMMIT
from mllmft.strategies.core.contract import TuningStrategy
from mllmft.strategies.penalties.anchored import EWC, AnchorPenalty
from mllmft.strategies.selective.fixed_masks import MagnitudeMask, RandomMask
from mllmft.strategies.selective.gradient_masks import GMT, SPU
from mllmft.strategies.selective.hft import HFT
from mllmft.strategies.selective.model_dowser import ModelDowser
from mllmft.strategies.selective.spider import SPIDER

__all__ = [
    "EWC",
    "GMT",
    "HFT",
    "IA3",
    "KORE",
    "SPIDER",
    "SPU",
    "AdaLoRA",
    "AnchorPenalty",
    "CoMMIT",
    "FullFineTuning",
    "LoRA",
    "LoRASculpt",
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
