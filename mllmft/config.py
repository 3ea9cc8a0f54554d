"""Where the Hydra configs live, the resolvers they use, and the dotted paths they may name."""

from __future__ import annotations

import importlib
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from mllmft.errors import ConfigError

# mllmft/conf: in a checkout a link to the repository's conf/, in a wheel the configs themselves
CONF_DIR = (Path(__file__).parent / "conf").resolve()


def import_object(path: str, setting: str):
    """The object a dotted path names (``my_package.module.NAME``), as ``_target_`` does; a path that does
    not import is a one-line error naming the setting."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{setting}={path!r} does not import ({type(err).__name__}: {err})") from err


def _wandb_offline() -> bool:
    """Log to W&B online only when an API key is there (``WANDB_API_KEY``, or ~/.netrc for the W&B host,
    ``WANDB_BASE_URL``'s when set), where ``wandb login`` puts it. Without one, wandb.init would stop
    and ask for a key on a terminal and fail elsewhere; wandb has no public call that only asks
    whether a key is there."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_OFFLINE") == "true":
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


# overrides that say where a run writes or how it prints, not what it is
_NOT_A_KNOB = ("hydra.", "paths.", "logger", "callbacks", "print_config", "finetuned", "ckpt_path", "export")


def hydra_config():
    """Hydra's config of this job, or None outside a Hydra app (the notebook API, tests)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _multirun(hydra) -> bool:
    from hydra.types import RunMode

    return hydra.mode == RunMode.MULTIRUN


def _run_name(model: str, strategy: str) -> str:
    """``<model>-<strategy>`` and the command line's knobs, e.g. ``tiny_llava-spider module.lr=3e-4 seed=1``:
    every job of a sweep gets its own name."""
    hydra = hydra_config()
    overrides = (
        []
        if hydra is None
        else [
            o
            for o in hydra.overrides.task
            if not o.lstrip("+~").startswith(_NOT_A_KNOB) and not o.startswith(("strategy=", "model="))
        ]
    )
    return " ".join([f"{model}-{strategy}", *overrides])


def _run_group(task_name: str) -> str:
    """A sweep's jobs share a group (the task and the sweep's directory), an experiment's its name;
    otherwise the task (train, eval, merge)."""
    hydra = hydra_config()
    if hydra is None:
        return task_name
    if _multirun(hydra):
        return f"{task_name}/{Path(hydra.sweep.dir).name}"
    experiment = hydra.runtime.choices.get("experiment")
    return f"{task_name}/{experiment}" if experiment and experiment != "null" else task_name


def is_first_job() -> bool:
    """Outside a sweep, or its job 0: what prints the config once per sweep."""
    hydra = hydra_config()
    return hydra is None or not _multirun(hydra) or hydra.job.num == 0


def resolved(cfg: DictConfig) -> dict:
    """The config as plain values, every interpolation resolved (results.json, the loggers' hparams)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return plain


def register_resolvers() -> None:
    for name, resolver in (("wandb_offline", _wandb_offline), ("run_name", _run_name), ("run_group", _run_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
