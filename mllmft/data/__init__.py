from mllmft.data.builtin import DigitsSource, ShapesSource
from mllmft.data.collate import IGNORE_INDEX, ConversationCollator
from mllmft.data.datamodule import MLLMDataModule
from mllmft.data.llava_json import LlavaJsonSource, read_llava_json
from mllmft.data.record import Record, Turn
from mllmft.errors import DataError

__all__ = ["DataError", "DigitsSource", "ConversationCollator", "IGNORE_INDEX", "LlavaJsonSource",
           "MLLMDataModule", "Record", "ShapesSource", "Turn", "read_llava_json"]
