"""mllmft: fine-tune multimodal LLMs with pluggable tuning strategies; measure gain and forgetting."""

__version__ = "0.1.0"
