"""θ0: a copy of the trainable weights as loaded, kept beside them (same device, same dtype)."""

from __future__ import annotations

from torch import nn


class Anchor:
    """The pre-trained values of every trainable tensor, taken before any update.

    It is taken at ``strategy.attach`` (the weights the run loaded) and never saved in checkpoints:
    a resumed run loads the same base weights first, so the same θ0 is taken again. ``follow``
    moves each copy to its parameter's device and dtype once Lightning has placed the model
    (bf16-true runs keep θ0 in bf16: 2 bytes per parameter).
    """

    def __init__(self, model: nn.Module):
        self.theta0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def follow(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, value in self.theta0.items():
            p = params[name]
            if value.device != p.device or value.dtype != p.dtype:
                self.theta0[name] = value.to(device=p.device, dtype=p.dtype)

    def named(self, model: nn.Module):
        """(name, parameter, θ0) for every anchored parameter."""
        for name, p in model.named_parameters():
            if name in self.theta0:
                yield name, p, self.theta0[name]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.theta0.values())

