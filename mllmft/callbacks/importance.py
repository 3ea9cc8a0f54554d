"""ImportanceAccumulator: per-tensor running statistics of the gradients of every optimizer step.

One implementation serves SPIDER (signed sum), GMT (the step's own gradient), SPU (|signed sum| over a
scoring window) and EWC (squared sums = diagonal empirical Fisher).
"""

from __future__ import annotations

import torch
from lightning import Callback
from torch import nn

from mllmft.errors import ConfigError

STATS = ("signed", "abs", "sq")


class ImportanceAccumulator(Callback):
    """Reads gradients in ``on_before_optimizer_step``: after backward, gradient accumulation, the
    data-parallel average and AMP unscaling, before clipping and the step. State lives on the
    parameter's own device, in fp32, one tensor per statistic per trainable parameter.

    ``window_steps``: accumulate over the first N optimizer steps only (None: the whole run).
    """

    def __init__(self, stats: tuple[str, ...] = ("signed",), window_steps: int | None = None):
        bad = set(stats) - set(STATS)
        if bad:
            raise ConfigError(f"unknown importance statistics {sorted(bad)}; expected {STATS}")
        self.stats = tuple(stats)
        self.window_steps = window_steps
        self.state: dict[str, dict[str, torch.Tensor]] = {s: {} for s in self.stats}
        self.steps = 0

    @property
    def state_key(self) -> str:
        return f"ImportanceAccumulator{self.stats}"

    @property
    def active(self) -> bool:
        """Whether optimizer steps still add to the statistics (``window_steps=0``: never; the
        owner calls ``accumulate`` itself, as EWC does before training)."""
        return self.window_steps is None or self.steps < self.window_steps

    @torch.no_grad()
    def accumulate(self, named_grads) -> None:
        """Add one step's gradient, given as (name, gradient or None) pairs, to the statistics."""
        for name, grad in named_grads:
            if grad is None:
                continue
            g = grad.float()
            for stat in self.stats:
                buf = self.state[stat].get(name)
                if buf is None or buf.device != g.device:
                    buf = self.state[stat][name] = (torch.zeros_like(g) if buf is None else buf.to(g.device))
                if stat == "signed":
                    buf.add_(g)
                elif stat == "abs":
                    buf.add_(g.abs())
                else:
                    buf.addcmul_(g, g)
        self.steps += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.active:
            self.accumulate((n, p.grad) for n, p in trainable(pl_module.model))

    def get(self, stat: str, name: str) -> torch.Tensor | None:
        return self.state[stat].get(name)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for per in self.state.values() for t in per.values())

    def state_dict(self) -> dict:
        return {"steps": self.steps, "state": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = state_dict["steps"]
        self.state = {s: dict(state_dict["state"].get(s, {})) for s in self.stats}


def trainable(model: nn.Module):
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)
