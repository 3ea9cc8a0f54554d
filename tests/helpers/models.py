"""Every model config as a run composes it, and generation through a model's own collator."""

from __future__ import annotations

import torch

from mllmft import api
from mllmft.config import CONF_DIR

# composed, as a run sees them (the tiny ones extend model/_tiny.yaml)
MODEL_CONFIGS = {
    p.stem: api.compose([f"model={p.stem}"]).model
    for p in sorted((CONF_DIR / "model").glob("*.yaml"))
    if not p.stem.startswith("_")
}

TINY_MODELS = [name for name, cfg in MODEL_CONFIGS.items() if cfg.tiny is not None]

REAL_MODELS = [name for name, cfg in MODEL_CONFIGS.items() if cfg.get("architecture") is not None]


def items(records):
    return [(i, r, r.load_images()) for i, r in enumerate(records)]


def generate(module, processor, records):
    batch = module.backbone.collator_class(processor, 256, generate=True)(items(records))
    module.model.eval()
    with torch.no_grad():
        logits = module.model(**batch["model_inputs"]).logits
    return logits, module.generate(batch["model_inputs"], 6)
