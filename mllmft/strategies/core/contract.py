"""The tuning-strategy contract: how the parameters the scope left trainable are updated.

A strategy is a small object built from ``conf/strategy/<name>.yaml`` (its name is that file's: the
``strategy=`` choice) that works on tensors only. The ``StrategyRunner`` callback (core/runner.py) calls
it on every engine, and a run reads, top to bottom:

    strategy.check_training(cfg)             # start-up: the run's settings it cannot train with
    strategy.attach(backbone)                # once, when the run is built: wrap (peft), freeze
    strategy.capture(whole_trainable_weights)   # fit starts, if captures_weights: θ0, |θ0| ...
    strategy.start(ctx)                      # the engine placed the model, a checkpoint is restored:
                                             # per-tensor state beside each of ctx.fragments
    for each optimizer step:
        strategy.before_batch(ctx, batch)
        loss = objective(batch) + strategy.extra_loss(module, batch, outputs)
        loss.backward()                      # the engine reduces the gradients over the ranks
        strategy.before_step(ctx)            # read or change the reduced gradients
        optimizer.step()
        strategy.after_step(ctx)             # read or change the new weights; if writes_weights,
        engine.publish(ctx.fragments)        # ... the runner makes them what the next forward reads
        strategy.after_batch(ctx, batch)
    strategy.finish(ctx)                     # rank 0 draws its figures

``ctx`` (core/context.py) carries everything a hook may use: this rank's fragments, the engine's
reductions, the optimizer and its schedule, the total steps, upstream batches, the loggers. Per-tensor
statistics come from ``tensor_stats`` (a few scalars reduced through ``ctx.engine``), so the same code
gives the same numbers on one device, under DDP, FSDP2 and DeepSpeed ZeRO-2/3. ``state_dict`` holds
what must survive a checkpoint, as this rank holds it: the runner puts it in the checkpoint (one
device, DDP) or stores each rank's beside a sharded checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning import Callback

from mllmft.backbones import Backbone


class TuningStrategy:
    """A tuning strategy: ``attach`` changes the model once (freezing, masks, adapters); the tensor hooks
    (``before_step``, ``after_step``, ...) run through the StrategyRunner on every engine; ``extra_loss``
    adds a term to the loss."""

    name: str = "by_hand"  # the ``strategy=`` choice, given by ``from_config`` (one built by hand has none)
    trains: bool = True  # False: the run only evaluates
    writes_weights: bool = False  # after_step changes weights (the engine must publish them)
    captures_weights: bool = False  # capture() wants the loaded trainable weights
    unsharded_only: str = ""  # why the strategy cannot run on parameter shards (empty: it can)
    unpacked_only: str = ""  # why it cannot train on packed batches (mllmft.packing; empty: it can)

    def check_training(self, cfg) -> None:
        """Refuse the run's other settings (``cfg``: the whole config, e.g. the data, the trainer) this
        strategy cannot train with, with a ConfigError: at start-up, before any model is built."""

    def attach(self, backbone: Backbone) -> None:
        """Prepare the model (wrap, freeze); called before the trainer exists."""

    def callbacks(self) -> list[Callback]:
        """Extra Lightning callbacks (peft's own schedules); tensor work belongs in the hooks below."""
        return []

    def capture(self, weights: dict[str, torch.Tensor]) -> None:
        """{name: whole tensor} of the trainable weights as loaded (before any checkpoint restore)."""

    def start(self, ctx) -> None:
        """Per-fragment state, once fragments exist (after a restore: from the loaded state)."""

    def before_batch(self, ctx, batch: dict) -> None:
        pass

    def before_step(self, ctx) -> None:
        """Read or change the reduced gradients of ``ctx.fragments`` (before clipping and the step)."""

    def after_step(self, ctx) -> None:
        """Read or change the weights of ``ctx.fragments`` right after the optimizer step."""

    def after_batch(self, ctx, batch: dict) -> None:
        pass

    def extra_loss(self, module, batch: dict, outputs) -> torch.Tensor | None:
        """A term added to the task loss in the same backward (a function of the model's outputs)."""
        return None

    def finish(self, ctx) -> None:
        pass

    def state_nbytes(self) -> int:
        """Bytes of persistent state this rank keeps beside the model (θ0, statistics, masks)."""
        return 0

    def summary(self) -> dict:
        """What results.json records under ``run.strategy_info`` (e.g. Model-Dowser's probe time)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @property
    def acts_on_training(self) -> bool:
        """Whether any hook of the runner does work (else the optimizer alone trains)."""
        return any(getattr(type(self), hook) is not getattr(TuningStrategy, hook) for hook in HOOKS)


def from_config(cfg) -> TuningStrategy:
    """The run's tuning strategy, built from ``cfg.strategy`` and named by the ``strategy=`` choice (the
    name of its YAML file: in results.json, checkpoints, logs and reports)."""
    from hydra.utils import instantiate

    strategy = instantiate(cfg.strategy)
    strategy.name = str(cfg.strategy_name)
    return strategy


HOOKS = ("capture", "start", "before_batch", "before_step", "after_step", "after_batch", "finish")


def tensor_nbytes(*groups: Mapping[Any, torch.Tensor]) -> int:
    """Bytes of the memory the tensors of ``groups`` keep alive: each storage once, whole (a view of a
    larger tensor holds all of it)."""
    storages = {}
    for group in groups:
        for t in group.values():
            storage = t.untyped_storage()
            storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())
