"""``mllmft-train``: fine-tune with a strategy, then test on the target and upstream sets.

mllmft-train strategy=full scope=llm data=digits trainer.max_steps=50
mllmft-train -m strategy=full,zeroshot seed=1,2
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllmft.cli import user_errors_exit
from mllmft.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float | None:
    from mllmft.run import metric_value, run  # torch and Lightning after Hydra parsed: --help is fast

    results = run(cfg)
    name = cfg.get("optimized_metric")
    return metric_value(results, name) if name else None  # what sweepers optimise


if __name__ == "__main__":
    main()
