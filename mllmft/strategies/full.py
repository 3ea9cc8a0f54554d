from mllmft.strategies.base import TuningStrategy


class FullFineTuning(TuningStrategy):
    """Plain fine-tuning of every parameter the scope makes trainable."""

    name = "full"
