"""What a run does to the model between its zero-shot test and its final test, chosen by ``change=``:

* ``fit`` (mllmft-train): train with the tuning strategy and the objective (a strategy that does not
  train, ``zeroshot``, makes it an evaluation);
* ``merge`` (mllmft-merge): merge a fine-tuned result (``finetuned=``) into the base model with
  ``merge=<method>``;
* ``evaluate`` (mllmft-eval): nothing; the model as loaded, or a training checkpoint (``ckpt_path``).

Each checks its own input as early as it can: ``from_config`` before the model is built, ``check``
against the built run before any evaluation; ``apply`` makes the change and returns what joins
``results["run"]``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, ClassVar

from omegaconf import DictConfig

from mllmft.errors import ConfigError

if TYPE_CHECKING:
    from mllmft.merges import FinetunedWeights
    from mllmft.parts import RunParts

log = logging.getLogger(__name__)


class Change:
    trains: ClassVar[bool] = False  # whether it fits the model (the strategy's training settings apply)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Change:
        return cls()

    def changes_model(self, strategy) -> bool:
        """Whether the model changes (then the zero-shot test is the reference row)."""
        return False

    def check(self, parts: RunParts) -> None:
        """Its input against the built run, before any evaluation."""

    def apply(self, parts: RunParts, ckpt_path: str | None) -> dict:
        return {}


class Evaluate(Change):
    """Nothing changes: the final test is the whole run (from ``ckpt_path`` where one is given)."""


class Fit(Change):
    trains = True

    def changes_model(self, strategy) -> bool:
        return strategy.trains

    def apply(self, parts: RunParts, ckpt_path: str | None) -> dict:
        if parts.trains:
            parts.trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
        return {}


class Merge(Change):
    """θ_ft (``finetuned=``: a run directory, its export, an HF directory or a training checkpoint)
    merged into θ0, the run's model, by ``method``."""

    def __init__(self, method, finetuned: str):
        from mllmft.merges import locate_finetuned

        self.method = method
        self.located, self.run_strategy = locate_finetuned(finetuned)  # what it names, not yet loaded
        self.finetuned: FinetunedWeights | None = None  # θ_ft, loaded by check()
        self.opened_s = 0.0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Change:
        from hydra.utils import instantiate

        return cls(instantiate(cfg.merge), cfg.finetuned)

    def changes_model(self, strategy) -> bool:
        return True

    def check(self, parts: RunParts) -> None:
        from mllmft.merges import FinetunedWeights

        started = time.perf_counter()
        self.finetuned = FinetunedWeights.load(
            self.located, self.run_strategy, parts.backbone, parts.module.run_identity
        )
        if self.method.calibrates:
            parts.datamodule.setup("fit")  # the target's training data, read and checked now
        self.opened_s = time.perf_counter() - started

    def apply(self, parts: RunParts, ckpt_path: str | None) -> dict:
        from mllmft.merges import merge_into

        finetuned, method = self.finetuned, self.method
        assert finetuned is not None, "check() loads θ_ft before the merge"
        started = time.perf_counter()
        method.prepare(parts.backbone, parts.datamodule, finetuned)
        changed = merge_into(parts.backbone.model, method, finetuned)
        extra = sum(t.numel() * t.element_size() for t in finetuned.tensors.values())
        seconds = round(self.opened_s + time.perf_counter() - started, 3)
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


CHANGES: dict[str, type[Change]] = {"fit": Fit, "merge": Merge, "evaluate": Evaluate}


def change_from_config(cfg: DictConfig) -> Change:
    """The run's ``change=`` (fit, merge, evaluate), its own settings checked."""
    name = cfg.get("change", "fit")
    if name not in CHANGES:
        raise ConfigError(f"change={name!r}; expected one of {list(CHANGES)}")
    return CHANGES[name].from_config(cfg)
