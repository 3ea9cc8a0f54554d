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
    """The change mllmft-merge makes where mllmft-train would fit: read θ_ft, merge it into θ0.

    Its input is checked as early as each check can be: the method's knobs and what ``finetuned=``
    names now, before the base model is built; θ_ft against the built base (and the method's data)
    in ``update(parts)``, before any evaluation; the merge itself runs in the change it returns."""
    from mllmft.merges import locate_finetuned

    method = instantiate(cfg.merge)
    located, run_strategy = locate_finetuned(cfg.finetuned)

    def update(parts: RunParts):
        from mllmft.merges import FinetunedWeights, merge_into

        started = time.perf_counter()
        parts.merge = method
        finetuned = FinetunedWeights.load(located, run_strategy, parts.backbone, parts.module.run_identity)
        if method.calibrates:
            parts.datamodule.setup("fit")  # the target's training data, read and checked now
        opened = time.perf_counter() - started

        def merge() -> dict:
            started = time.perf_counter()
            method.prepare(parts, finetuned)
            changed = merge_into(parts.backbone.model, method, finetuned)
            extra = sum(t.numel() * t.element_size() for t in finetuned.tensors.values())
            seconds = round(opened + time.perf_counter() - started, 3)
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

        return merge

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
