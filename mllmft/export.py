"""Exports any transformers user can load, without mllmft.

``export=merged`` writes a standard Hugging Face directory (weights as safetensors + processor):
``AutoModelForImageTextToText.from_pretrained(dir)``. peft adapters are merged into the weights first;
every other strategy's weights already are the fine-tuned model. ``export=adapter`` (peft strategies)
writes peft's adapter directory (adapter config and weights, including ``modules_to_save``) plus the
processor: ``PeftModel.from_pretrained(base_model, dir)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import peft

from mllmft.backbones import Backbone
from mllmft.errors import ConfigError
from mllmft.strategies import PeftStrategy
from mllmft.strategies.base import TuningStrategy

log = logging.getLogger(__name__)
EXPORTS = ("merged", "adapter")


def check_export(kind: str | None, strategy: TuningStrategy) -> None:
    """Refuse, at start-up, an export this run could not write."""
    if kind is None:
        return
    if kind not in EXPORTS:
        raise ConfigError(f"export={kind!r}; expected one of {EXPORTS} or null")
    strategy = getattr(strategy, "base", strategy)  # CoMMIT wraps the strategy that updates the weights
    is_peft = isinstance(strategy, PeftStrategy)
    if kind == "adapter" and not is_peft:
        raise ConfigError(f"export=adapter needs a peft strategy (lora, adalora, ...); strategy={strategy.name} "
                          "changes the weights themselves: use export=merged")
    if kind == "adapter" and strategy.bare_parameters:
        raise ConfigError(f"export=adapter cannot carry {strategy.bare_parameters}: the scope trains them but peft "
                          "saves only adapters and whole modules. Use export=merged, or freeze them in the scope")
    if kind == "merged" and is_peft and not strategy.targets_linears:
        raise ConfigError(f"export=merged: {strategy.name}'s virtual tokens cannot be merged into the weights; "
                          "use export=adapter")


def export_model(backbone: Backbone, kind: str, out_dir: str | Path) -> Path:
    """Write the export; ``merged`` merges adapters into the live model, so call it last."""
    out = Path(out_dir)
    model = backbone.model
    if kind == "merged" and isinstance(model, peft.PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    backbone.processor.save_pretrained(out)
    log.info("export=%s written to %s", kind, out)
    return out
