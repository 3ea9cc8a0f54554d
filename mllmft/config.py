"""Where the Hydra configs live, the resolvers they use, the dotted paths they may name, and the checks
every config file passes as it is read."""

from __future__ import annotations

import importlib
import netrc
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

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


class ConfigFileError(ConfigError, CompactHydraException):
    """A config file refused as it is read. Hydra reads them before the entry point runs, and prints a
    CompactHydraException as its one line (exit 1), as it does its own composition errors."""


# the values of one config file once its aliases (*name) are expanded: a config is far smaller, while
# a few lines of nested aliases ("billion laughs") expand past any memory as OmegaConf copies each
MAX_EXPANDED_VALUES = 100_000


def _checked_yaml_loader(loader: type) -> type:
    """``loader`` refusing, in one line naming the file: what is not YAML or not plain YAML values
    (``!!python/...`` tags), and aliases that expand a file past ``MAX_EXPANDED_VALUES``."""

    class CheckedLoader(loader):
        def get_single_data(self):
            try:
                node = self.get_single_node()
                if node is None:
                    return None
                _check_expansion(node, self.name)
                return self.construct_document(node)
            except (yaml.YAMLError, RecursionError) as err:
                raise ConfigFileError(_yaml_problem(err, self.name)) from err

    return CheckedLoader


def _yaml_problem(err: Exception, name: str) -> str:
    if isinstance(err, RecursionError):
        return f"{name}: nested too deeply to be a config"
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    where = f"{err.problem_mark.name}, line {err.problem_mark.line + 1}"
    problem = " ".join(str(err.problem).split())
    if "constructor for the tag" in problem:
        return f"{where}: {problem} (a config holds plain YAML values: no !!python/... or other tags)"
    return f"{where}: {problem}"


def _check_expansion(root: yaml.Node, name: str) -> None:
    """Count the document's values as OmegaConf will make them, each alias a copy of its anchor's,
    without making them: once per node (its count kept, and capped past the bound), so in linear time."""
    counts: dict[int, int] = {}
    open_nodes: set[int] = set()
    aliased = False

    def count(node: yaml.Node) -> int:
        nonlocal aliased
        if id(node) in counts:  # a node met again: through an alias
            aliased = True
            return counts[id(node)]
        if id(node) in open_nodes:  # an alias inside its own anchor: endless
            raise ConfigFileError(f"{name}: an alias (*name) inside the value it names makes an endless config")
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        counts[id(node)] = min(1 + sum(count(child) for child in children), MAX_EXPANDED_VALUES + 1)
        open_nodes.discard(id(node))
        return counts[id(node)]

    if count(root) > MAX_EXPANDED_VALUES and aliased:
        raise ConfigFileError(
            f"{name}: its aliases (*name) expand it to more than {MAX_EXPANDED_VALUES:,} values, far more than "
            "a config holds; write the values out or use fewer aliases"
        )


def _check_config_files() -> None:
    """Every config file Hydra reads (OmegaConf.load, from any search path: the package's configs, a
    --config-dir, conf/local) goes through the checked loader; OmegaConf asks ``get_yaml_loader`` at
    each load, and has no other way in."""
    from omegaconf import _utils

    if getattr(_utils.get_yaml_loader, "checked", False):
        return
    plain = _utils.get_yaml_loader

    def get_yaml_loader():
        return _checked_yaml_loader(plain())

    get_yaml_loader.checked = True  # type: ignore[attr-defined]
    _utils.get_yaml_loader = get_yaml_loader


def register_resolvers() -> None:
    for name, resolver in (("wandb_offline", _wandb_offline), ("run_name", _run_name), ("run_group", _run_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
_check_config_files()


def compose(
    overrides: list[str] | None = None, config_name: str = "train", output_dir: str | Path | None = None
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides, outside a Hydra app.

    ``paths.output_dir`` (set by Hydra's run directory on the command line) defaults to
    ``logs/api/<timestamp>`` under the current directory.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="api"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        # what ${hydra:runtime.choices...} reads in a Hydra app, as plain values: no Hydra state outside one
        cfg.strategy_name = cfg.hydra.runtime.choices.strategy
        del cfg.hydra
        cfg.paths.output_dir = str(output_dir or Path("logs/api") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    return cfg
