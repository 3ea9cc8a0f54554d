"""The one table from a Lightning strategy to its engine adapter: what the start-up check, the strategy
runner, generation and export all ask. A run's config names its Lightning strategy
(``hardware.lightning_strategy``: a registered name such as ``ddp`` or ``deepspeed_stage_3``, ``auto``,
or a ``_target_`` config); the class it builds decides the engine, before anything is built."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, StrategyRegistry

from mllmft.engines.base import Engine, FSDP1Engine
from mllmft.engines.fsdp2 import FSDP2Engine
from mllmft.engines.zero import ZeroEngine
from mllmft.errors import ConfigError

# Lightning strategy class (subclasses included: ours are FSDP2Strategy, ZeroStrategy) -> engine; any
# other strategy (one device, DDP in each launch mode) holds every tensor whole: Engine
ENGINES: tuple[tuple[type, type[Engine]], ...] = (
    (DeepSpeedStrategy, ZeroEngine),
    (ModelParallelStrategy, FSDP2Engine),
    (FSDPStrategy, FSDP1Engine),
)


def engine_class(lightning_strategy: type) -> type[Engine]:
    """The engine that a Lightning strategy class runs."""
    return next((engine for cls, engine in ENGINES if issubclass(lightning_strategy, cls)), Engine)


_BUILT: WeakKeyDictionary = WeakKeyDictionary()  # Lightning strategy object -> its engine


def engine_for(trainer: Any) -> Engine:
    """The engine adapter of ``trainer``'s Lightning strategy, built once per trainer: the strategy
    runner, generation and export share it (an FSDP2 engine learns its process group from the shards)."""
    strategy = trainer.strategy
    if strategy not in _BUILT:
        _BUILT[strategy] = engine_class(type(strategy))(trainer)
    return _BUILT[strategy]


def configured_engine(lightning_strategy: Any) -> type[Engine]:
    """The engine a ``hardware.lightning_strategy`` value will run, read from the config alone."""
    return engine_class(_strategy_class(lightning_strategy))


def _strategy_class(value: Any) -> type:
    if hasattr(value, "get"):  # a ``_target_`` config
        target = value.get("_target_")
        if not target:
            raise ConfigError("hardware.lightning_strategy: a config needs a _target_ (a Lightning strategy class)")
        from hydra.utils import get_class

        try:
            return get_class(str(target))
        except Exception as err:  # hydra wraps the import's error in its own
            raise ConfigError(
                f"hardware.lightning_strategy._target_={target}: not a class that can be imported"
            ) from err
    name = str(value)
    if name == "auto":  # one device, or DDP over several: every tensor whole
        return object
    if name not in StrategyRegistry:
        raise ConfigError(
            f"hardware.lightning_strategy={name}: not a Lightning strategy; expected auto, a registered name "
            f"({', '.join(sorted(StrategyRegistry.available_strategies())[:6])}, ...) or a _target_ config"
        )
    return StrategyRegistry[name]["strategy"]


def check_engine(tuning_strategy: Any, lightning_strategy: Any) -> None:
    """Refuse, before anything is built, a tuning strategy the configured engine cannot run: every
    strategy runs on one device and DDP; FSDP2 and DeepSpeed all but those ``unsharded_only``; FSDP1
    only those that leave training to the optimizer."""
    configured_engine(lightning_strategy).check_strategy(tuning_strategy)
