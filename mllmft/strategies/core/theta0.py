"""θ0: the pre-trained values of every trainable tensor, kept beside this rank's part of it.

Captured when fitting starts, from the whole model as loaded (before it is sharded and before a
checkpoint is restored, so a resumed run takes the same θ0 again and never stores it), then cut to
each fragment and cast to the parameter's dtype once the engine has placed the model (bf16-true runs
keep θ0 in bf16: 2 bytes per parameter). The whole copies exist only in between, on the host.
"""

from __future__ import annotations

import torch

from mllmft.strategies.core.contract import tensor_nbytes


class Theta0:
    def __init__(self):
        self._whole: dict[str, torch.Tensor] = {}
        self.parts: dict[str, torch.Tensor] = {}

    def capture(self, weights: dict[str, torch.Tensor]) -> None:
        self._whole = dict(weights)
        self.parts = {}

    def place(self, fragments) -> None:
        for f in fragments:
            if f.name in self._whole:
                self.parts[f.name] = f.copy_part(self._whole.pop(f.name), f.param.dtype)
        self._whole = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.parts[name]

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    def nbytes(self) -> int:
        return tensor_nbytes(self.parts, self._whole)
