from mllmft.data.captions import CocoCaptions, KarpathyCaptions
from mllmft.data.choice_sets import IconQA, ScienceQA
from mllmft.data.collate import IGNORE_INDEX, ConversationCollator
from mllmft.data.datamodule import MLLMDataModule
from mllmft.data.digits import DigitsSource
from mllmft.data.drawn import CountingSource, PositionsSource, ShapesSource, SkillMix
from mllmft.data.general_sets import MME, POPE, MMBench, SEEDBench
from mllmft.data.hf_dataset import HFDataset
from mllmft.data.llava_json import LlavaJsonSource, read_llava_json
from mllmft.data.record import Record, Turn
from mllmft.data.test_set import TestSet
from mllmft.data.vqa_sets import AOKVQA, GQA, OCRVQA, TextVQA, VizWiz, VQAv2Style
from mllmft.errors import DataError

__all__ = [
    "AOKVQA",
    "CocoCaptions",
    "ConversationCollator",
    "CountingSource",
    "DataError",
    "DigitsSource",
    "GQA",
    "HFDataset",
    "IGNORE_INDEX",
    "IconQA",
    "KarpathyCaptions",
    "LlavaJsonSource",
    "MLLMDataModule",
    "MMBench",
    "MME",
    "OCRVQA",
    "POPE",
    "PositionsSource",
    "Record",
    "SEEDBench",
    "ScienceQA",
    "ShapesSource",
    "SkillMix",
    "TestSet",
    "TextVQA",
    "Turn",
    "VQAv2Style",
    "VizWiz",
    "read_llava_json",
]
