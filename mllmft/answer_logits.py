"""The logits of the answer tokens only: the LM head run on the hidden states whose next token carries loss.

Over a 32k–152k vocabulary the logits are the largest tensor of a step — [B, T, V], and again in fp32 for
the loss —, yet only the answer tokens carry loss: a few of a VQA sample's ~600 positions behind its image.
``answer_tokens(model, inputs, labels)`` runs the model with a forward pre-hook on its output embedding
(the LM head of every family, peft's wrappers included) that hands the head only the supervised
positions' hidden states, [1, N, H]: the head computes [N, V] and autograd keeps that, not [B, T, V].
The hook works on any causal family, where HF's ``logits_to_keep`` keeps one set of positions for the
whole batch (the union of every row's answer span) and only in the families that take it.

Every forward that scores answers goes through here (the training loss, validation, the base model's
logits of ASFT and GRPO, CoMMIT's distributions, the forgetting probe), so the KL terms read the same
positions. ``module.logits=all`` computes the training loss from the whole [B, T, V] instead (the model's
own loss, as before), for comparison.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mllmft.data.collate import IGNORE_INDEX
from mllmft.errors import ConfigError

LOGITS = ("answers", "all")  # module.logits


def supervised(labels: torch.Tensor) -> torch.Tensor:
    """[B, T − 1]: whether the logits at position t predict a supervised token (the one at t + 1)."""
    return labels[:, 1:] != IGNORE_INDEX


@dataclass
class AnswerTokens:
    """The answer tokens of a batch, where the model predicts them: ``logits`` [N, V] (fp32) of the
    positions whose next token is supervised, ``targets`` [N] those tokens, in row-major order."""

    logits: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor  # [N] the row of the batch each token is in: its sample, but in a packed batch

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> AnswerTokens:
        """From a causal LM's logits over every position [B, T', V] and labels [B, T] (T' ≥ T: prompt
        tuning prepends its virtual tokens), as the model's own loss shifts them."""
        logits = logits[:, logits.shape[1] - labels.shape[1] :]
        mask = supervised(labels)
        return cls(logits[:, :-1][mask].float(), labels[:, 1:][mask], mask.nonzero()[:, 0])

    def log_probs(self) -> torch.Tensor:
        """log π(v) for every vocabulary entry, [N, V]."""
        return torch.log_softmax(self.logits, dim=-1)

    def target_log_probs(self, log_probs: torch.Tensor | None = None) -> torch.Tensor:
        """log π(y_t), [N]."""
        log_probs = self.log_probs() if log_probs is None else log_probs
        return log_probs.gather(1, self.targets[:, None])[:, 0]

    def cross_entropy(self) -> torch.Tensor:
        """mean_t −log π(y_t): the model's own loss (NaN without answer tokens, as the model's)."""
        return F.cross_entropy(self.logits, self.targets)


def output_embedding(model: nn.Module) -> nn.Module | None:
    """The LM head of a transformers model (through peft's wrappers), or None."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def check_head(model: nn.Module, logits: str) -> None:
    """``module.logits=answers`` refused at start-up for a model whose LM head cannot be found."""
    if logits == "answers" and output_embedding(model) is None:
        raise ConfigError(
            f"module.logits=answers runs the LM head on the answer positions only, and {type(model).__name__} "
            "names no output embedding (get_output_embeddings): set module.logits=all"
        )


@contextmanager
def head_on_answers(model: nn.Module, labels: torch.Tensor) -> Iterator[None]:
    """Within: ``model``'s LM head sees only the hidden states of the positions ``supervised(labels)``
    marks, [1, N, H], so its logits are [1, N, V] in that order."""
    head = output_embedding(model)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embedding to run on the answer positions only")
    mask = supervised(labels)

    def keep_answers(_module, args):
        hidden = args[0]
        start = hidden.shape[1] - labels.shape[1]  # virtual tokens (prompt tuning) come first
        return (hidden[:, start : hidden.shape[1] - 1][mask][None], *args[1:])

    handle = head.register_forward_pre_hook(keep_answers)
    try:
        yield
    finally:
        handle.remove()


def answer_tokens(model: nn.Module, inputs: dict, labels: torch.Tensor) -> AnswerTokens:
    """``model``'s logits at the answer positions of ``inputs``, computed there only."""
    mask = supervised(labels)
    with head_on_answers(model, labels):
        logits = model(**inputs).logits
    return AnswerTokens(logits[0].float(), labels[:, 1:][mask], mask.nonzero()[:, 0])


class AnswerOutputs:
    """A training forward's result for the objective and the strategy: ``tokens`` (the answer tokens'
    logits) and ``loss`` (their mean cross-entropy, the SFT loss)."""

    def __init__(self, model: nn.Module, inputs: dict, labels: torch.Tensor, logits: str = "answers"):
        self._labels = labels
        if logits == "answers":
            self._tokens: AnswerTokens | None = answer_tokens(model, inputs, labels)
            self.loss = self._tokens.cross_entropy()
        else:  # the model's own loss over the logits of every position; the tokens picked out when asked
            self._outputs = model(**inputs, labels=labels)
            self._tokens = None
            self.loss = self._outputs.loss

    @property
    def tokens(self) -> AnswerTokens:
        if self._tokens is None:
            self._tokens = AnswerTokens.of(self._outputs.logits, self._labels)
        return self._tokens
