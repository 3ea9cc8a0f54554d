from mllmft.strategies.core.contract import TuningStrategy


class FullFineTuning(TuningStrategy):
    """Plain fine-tuning of every parameter the scope makes trainable."""
