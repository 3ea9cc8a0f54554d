from mllmft.backbones import Backbone
from mllmft.strategies.core.contract import TuningStrategy


class ZeroShot(TuningStrategy):
    """No training: evaluate the backbone as loaded (the reference row of every comparison)."""

    trains = False

    def attach(self, backbone: Backbone) -> None:
        backbone.model.requires_grad_(False)
