"""Post-hoc merging of a fine-tuned model into its base, chosen by ``conf/merge/<name>.yaml``."""

from mllmft.merges.base import FinetunedWeights, MergeMethod, locate_finetuned, merge_into
from mllmft.merges.grafting import Grafting
from mllmft.merges.lines import LiNeS
from mllmft.merges.model_tailor import ModelTailor
from mllmft.merges.task_vectors import DARE, TIES, TaskArithmetic, WiSEFT

__all__ = [
    "DARE",
    "TIES",
    "FinetunedWeights",
    "Grafting",
    "LiNeS",
    "MergeMethod",
    "ModelTailor",
    "TaskArithmetic",
    "WiSEFT",
    "locate_finetuned",
    "merge_into",
]
