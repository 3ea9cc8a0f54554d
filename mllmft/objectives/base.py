"""The objective contract, and the per-token quantities every token-level objective is made of.

The module calls ``objective.loss(module, batch, outputs)`` in each training step, with the model's
outputs on the batch (its logits and, labels given, its mean cross-entropy on the answer tokens); the
strategy's ``extra_loss`` is added to what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mllmft.data.collate import IGNORE_INDEX


@dataclass
class AnswerTokens:
    """The answer tokens of a batch, where the model predicts them: ``logits`` [N, V] (fp32) of the
    positions whose next token is supervised, ``targets`` [N] those tokens."""

    logits: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> AnswerTokens:
        """From a causal LM's logits [B, T, V] and labels [B, T] (IGNORE_INDEX off the answers): the
        prediction at t is of the token at t + 1, as the model's own loss shifts them."""
        shifted = labels[:, 1:]
        supervised = shifted != IGNORE_INDEX
        return cls(logits[:, :-1][supervised].float(), shifted[supervised])

    def log_probs(self) -> torch.Tensor:
        """log π(v) for every vocabulary entry, [N, V]."""
        return torch.log_softmax(self.logits, dim=-1)

    def target_log_probs(self, log_probs: torch.Tensor | None = None) -> torch.Tensor:
        """log π(y_t), [N]."""
        log_probs = self.log_probs() if log_probs is None else log_probs
        return log_probs.gather(1, self.targets[:, None])[:, 0]


class Objective:
    """A training objective; ``name`` is its ``objective=`` choice."""

    name = "sft"

    def attach(self, backbone, engine: str) -> None:
        """Prepare what the loss needs beside the model, once the strategy has wrapped it, or refuse
        (ConfigError) what it cannot train with; ``engine``: local (one device, DDP), fsdp2, deepspeed."""

    def loss(self, module, batch: dict, outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of ``batch`` and what to log beside it (``train/<key>``)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """What results.json records under ``run.objective`` (the name and the knobs)."""
        return {"name": self.name}
