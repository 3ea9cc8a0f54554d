"""``mllmft-merge``: merge a fine-tuned result into its base model, then test it as mllmft-train does.

    mllmft-merge merge=wise_ft merge.alpha=0.5 finetuned=logs/train/runs/<run>
    mllmft-merge -m merge=wise_ft merge.alpha=0,0.25,0.5,0.75,1 finetuned=...   # the WiSE-FT curve
    mllmft-merge merge=dare finetuned=.../export export=merged                 # and write the HF directory

The base is ``model=`` (θ0); the target and upstream sets, the zero-shot reference row and
results.json (``run.merge``: the method and its knobs, its seconds and extra bytes) are mllmft-train's.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from mllmft.cli import user_errors_exit
from mllmft.config import CONF_DIR

if TYPE_CHECKING:
    from mllmft.run import RunParts

log = logging.getLogger(__name__)


def merge_update(cfg: DictConfig):
    """The change mllmft-merge makes where mllmft-train would fit: read θ_ft, merge it into θ0."""

    def update(parts: RunParts) -> dict:
        from mllmft.merges import FinetunedWeights, merge_into

        started = time.perf_counter()
        method = parts.merge = instantiate(cfg.merge)
        backbone = parts.backbone
        finetuned = FinetunedWeights.open(cfg.finetuned, backbone, parts.module.run_identity)
        method.prepare(parts, finetuned)
        changed = merge_into(backbone.model, method, finetuned)
        extra = sum(t.numel() * t.element_size() for t in finetuned.tensors.values())
        seconds = round(time.perf_counter() - started, 3)
        log.info("merge=%s: %d tensors from %s in %.1f s", method.name, changed, finetuned.source, seconds)
        return {
            "merge": {
                "method": method.name,
                **method.knobs(),
                "finetuned": finetuned.source,
                "finetuned_strategy": finetuned.strategy,
                "tensors_changed": changed,
                "seconds": seconds,
                "extra_bytes": extra,
            }
        }

    return update


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="merge")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    from mllmft.run import metric_value, run  # torch and Lightning after Hydra parsed: --help is fast

    results = run(cfg, update=merge_update(cfg))
    name = cfg.get("optimized_metric")
    return metric_value(results, name) if name else None


if __name__ == "__main__":
    main()
