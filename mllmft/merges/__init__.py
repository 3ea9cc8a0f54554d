"""Post-hoc merging of a fine-tuned model into its base, chosen by ``conf/merge/<name>.yaml``."""

from mllmft.merges.base import FinetunedWeights, MergeMethod, merge_into
from mllmft.merges.task_vectors import DARE, TIES, TaskArithmetic, WiSEFT

__all__ = ["DARE", "TIES", "FinetunedWeights", "MergeMethod", "TaskArithmetic", "WiSEFT", "merge_into"]
