"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import OmegaConf

# mllmft/conf: in a checkout a link to the repository's conf/, in a wheel the configs themselves
CONF_DIR = (Path(__file__).parent / "conf").resolve()


def _wandb_offline() -> bool:
    """Log to W&B online only when an API key is there (environment or ~/.netrc)."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_OFFLINE") == "true":
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", _wandb_offline)


register_resolvers()
