from mllmft.backbones import Backbone
from mllmft.strategies.base import TuningStrategy


class ZeroShot(TuningStrategy):
    """No training: evaluate the backbone as loaded (the reference row of every comparison)."""

    name = "zeroshot"
    trains = False

    def attach(self, backbone: Backbone) -> None:
        backbone.model.requires_grad_(False)
