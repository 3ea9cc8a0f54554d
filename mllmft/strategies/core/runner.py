"""StrategyRunner: the one Lightning callback through which a tuning strategy acts on training.

It owns the hooks (when gradients and weights may be read and written on each engine), the
engine adapter (where each tensor lives on this rank), logging, the strategy's checkpoint state and
the start-up check that the strategy runs on the chosen engine. The strategy itself only works on
its ``StepContext`` (core/context.py; core/contract.py gives the order of the calls).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mllmft.backbones import ComponentMap
from mllmft.engines import PerRankState, engine_for
from mllmft.strategies.core.context import StepContext, torch_optimizer
from mllmft.strategies.core.contract import TuningStrategy
from mllmft.strategies.core.mask_stats import MaskStats

log = logging.getLogger(__name__)


class StrategyRunner(PerRankState):
    def __init__(self, strategy: TuningStrategy, components: ComponentMap):
        self.strategy = strategy
        self.components = components
        self._ctx: StepContext | None = None
        self._restored: dict | None = None
        self._last_step = -1

    @property
    def ctx(self) -> StepContext:
        """The step context; it exists from on_train_start on."""
        assert self._ctx is not None, "the strategy runner's step hooks ran before on_train_start"
        return self._ctx

    @property
    def state_key(self) -> str:
        return f"StrategyRunner[{self.strategy.name}]"

    # --- set-up -----------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        engine_for(trainer).check_strategy(self.strategy)
        if self.strategy.captures_weights:  # whole, even if a zero-shot test has sharded the model already
            self.strategy.capture(engine_for(trainer).full_weights(pl_module.model, trainable_only=True))

    def on_train_start(self, trainer, pl_module) -> None:
        engine = engine_for(trainer)
        fragments = engine.fragments(pl_module.model)
        schedules = trainer.lr_scheduler_configs
        self._ctx = StepContext(
            engine,
            fragments,
            self.components,
            pl_module,
            optimizer=torch_optimizer(trainer.optimizers[0]) if trainer.optimizers else None,
            scheduler=schedules[0].scheduler if schedules else None,
            total_steps=int(trainer.estimated_stepping_batches),
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            upstream_batches=getattr(trainer.datamodule, "upstream_train_dataloader", None),
            mean_over_ranks=lambda t: trainer.strategy.reduce(t, reduce_op="mean"),
            out_dir=Path(trainer.default_root_dir),
            is_global_zero=trainer.is_global_zero,
            loggers=list(trainer.loggers),
            mask_stats=MaskStats(self.components, engine),
        )
        if self._restored is not None:
            self.strategy.load_state_dict(self._restored)
            self._restored = None
        self.strategy.start(self.ctx)
        self._last_step = trainer.global_step
        numel = max(1, sum(f.numel for f in fragments))
        log.info(
            "%s under %s: %.2f bytes of strategy state per trainable parameter on this rank",
            self.strategy.name,
            engine.name,
            self.strategy.state_nbytes() / numel,
        )

    # --- every step ---------------------------------------------------------------------------------
    def _at(self, trainer) -> StepContext:
        ctx = self.ctx
        ctx.step = trainer.global_step
        ctx.logging = ctx.step % max(1, trainer.log_every_n_steps) == 0
        return ctx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.strategy.before_batch(self._at(trainer), batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not _at_accumulation_boundary(trainer):
            return  # DeepSpeed calls this hook on every micro-batch
        self.strategy.before_step(self._at(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ctx = self.ctx
        if trainer.global_step != self._last_step:  # an optimizer step was taken in this batch
            self._last_step = trainer.global_step
            ctx.step = trainer.global_step - 1
            ctx.logging = ctx.step % max(1, trainer.log_every_n_steps) == 0
            if self.strategy.writes_weights:
                with torch.no_grad():
                    self.strategy.after_step(ctx)
                    ctx.engine.publish(ctx.fragments)
            else:
                self.strategy.after_step(ctx)
            self.strategy.after_batch(ctx, batch)
            if ctx.logging and ctx.mask_stats is not None and ctx.mask_stats.pending:
                ctx.log(ctx.mask_stats.summarise(ctx.step))
        if ctx.metrics:
            numel = max(1, sum(f.numel for f in ctx.fragments))
            pl_module.log_dict(
                {**ctx.metrics, "strategy/state_bytes_per_param": self.strategy.state_nbytes() / numel},
                batch_size=len(batch["ids"]),
            )
            ctx.metrics = {}

    def on_train_end(self, trainer, pl_module) -> None:
        if self._ctx is None:
            return
        self.strategy.finish(self._ctx)
        name, stats = self.strategy.name, self._ctx.mask_stats
        if trainer.is_global_zero and stats is not None and stats.history:
            path = stats.save_heatmap(
                Path(trainer.default_root_dir) / f"{name}_mask_density.png",
                f"{name}: share of each layer's weights allowed to move",
            )
            log.info("mask density heatmap: %s", path)

    # --- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.strategy.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        # fragments may not exist yet (DDP restores before the engine places the model): apply at start
        if self._ctx is None:
            self._restored = state_dict
        else:
            self.strategy.load_state_dict(state_dict)


def _at_accumulation_boundary(trainer) -> bool:
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    return engine is None or engine.is_gradient_accumulation_boundary()
