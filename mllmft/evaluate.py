"""``mllmft-eval``: evaluate a backbone (zero-shot, or a checkpoint) on the target and upstream sets.

mllmft-eval                                   # the configured backbone, as loaded
mllmft-eval model.checkpoint=/path/to/hf_dir  # any HF checkpoint directory
mllmft-eval ckpt_path=logs/.../last.ckpt      # a training checkpoint of mllmft-train
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllmft.cli import user_errors_exit
from mllmft.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    from mllmft.run import run  # torch and Lightning after Hydra parsed: --help is fast

    run(cfg)


if __name__ == "__main__":
    main()
