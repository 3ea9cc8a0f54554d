"""``mllmft-train``: fine-tune with a strategy, then test on the target and upstream sets.

    mllmft-train strategy=full scope=llm data=digits trainer.max_steps=50
    mllmft-train -m strategy=full,zeroshot seed=1,2
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllmft.config import CONF_DIR
from mllmft.run import metric_value, run


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    finally:
        _finish_wandb()  # one W&B run per multirun job, not one for the whole sweep
    name = cfg.get("optimized_metric")
    return metric_value(results, name) if name else None


def _finish_wandb() -> None:
    import sys

    if "wandb" in sys.modules:
        import wandb

        wandb.finish()


if __name__ == "__main__":
    main()
