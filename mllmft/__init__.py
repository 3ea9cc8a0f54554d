"""mllmft: fine-tune multimodal LLMs with pluggable tuning strategies; measure gain and forgetting.

Entry points: ``mllmft-train``, ``mllmft-eval``, ``mllmft-merge``, ``mllmft-chat``, ``mllmft-benchmark``,
``mllmft-report``. From Python: ``mllmft.api`` (compose, build, run); the pieces it builds come from
``mllmft.backbones``, ``mllmft.data``, ``mllmft.strategies``, ``mllmft.merges`` and ``mllmft.metrics``.
Importing this package imports nothing else (the command line stays fast).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
