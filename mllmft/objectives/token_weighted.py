"""Token-level objectives on the answer tokens: plain SFT, and the 2025–26 reweightings of its
cross-entropy that forget less (DFT, EAFT) or anchor it to the base model (ASFT).

Each loss is the mean over the batch's answer tokens of a per-token term, as SFT's cross-entropy is:

* ``sft``  : −log π(y_t)                                           (the model's own loss, unchanged)
* ``dft``  : −sg(π(y_t)) · log π(y_t)          (Wu et al., "On the Generalization of SFT", arXiv 2508.05629)
* ``eaft`` : −sg((H_k / ln k)^α) · log π(y_t), H_k the entropy of the top-k of π renormalised
             (entropy-adaptive fine-tuning, arXiv 2601.02151): confident tokens weigh less
* ``asft`` : dft + λ · KL(π_θ ‖ π_base), the KL over the vocabulary at each answer token
             (anchored SFT, arXiv 2509.23753); the base sees the same images and text.
sg: stop-gradient (the weight is a number, not a path for the gradient).
"""

from __future__ import annotations

import math

import torch

from mllmft.answer_logits import AnswerTokens
from mllmft.checks import check_number
from mllmft.engines import Engine
from mllmft.objectives.base import BaseLogits, Objective


class SFT(Objective):
    """Cross-entropy on the answer tokens: the model's own loss, bit for bit what training always did."""

    name = "sft"

    def loss(self, module, batch, outputs):
        return outputs.loss, {}


def dft_loss(tokens: AnswerTokens) -> torch.Tensor:
    """mean_t −sg(π(y_t)) · log π(y_t)."""
    log_p = tokens.target_log_probs()
    return -(log_p.detach().exp() * log_p).mean()


def eaft_loss(tokens: AnswerTokens, k: int, alpha: float) -> torch.Tensor:
    """mean_t −sg((H_k / ln k)^α) · log π(y_t)."""
    log_probs = tokens.log_probs()
    with torch.no_grad():
        top = torch.log_softmax(tokens.logits.topk(k, dim=-1).values, dim=-1)  # the top k, renormalised
        weight = (-(top.exp() * top).sum(-1) / math.log(k)).clamp(min=0).pow(alpha)
    return -(weight * tokens.target_log_probs(log_probs)).mean()


def kl_to_base(tokens: AnswerTokens, base_logits: torch.Tensor) -> torch.Tensor:
    """mean_t KL(π_θ ‖ π_base) = Σ_v π_θ(v) (log π_θ(v) − log π_base(v)), ``base_logits`` [N, V] at the
    same positions."""
    log_probs = tokens.log_probs()
    base = torch.log_softmax(base_logits.float(), dim=-1)
    return (log_probs.exp() * (log_probs - base)).sum(-1).mean()


class DFT(Objective):
    """Dynamic fine-tuning: each answer token's cross-entropy weighted by its own probability."""

    name = "dft"

    def loss(self, module, batch, outputs):
        return dft_loss(outputs.tokens), {}


class EAFT(Objective):
    """Entropy-adaptive fine-tuning: each answer token's cross-entropy weighted by the normalised entropy
    of the model's top-``k`` prediction there, to the power ``alpha``."""

    name = "eaft"

    def __init__(self, k: int = 20, alpha: float = 1.0):
        check_number("objective.k", k, 2, integer=True)
        check_number("objective.alpha", alpha, 0)
        self.k, self.alpha = k, alpha

    def loss(self, module, batch, outputs):
        tokens = outputs.tokens
        return eaft_loss(tokens, min(self.k, tokens.logits.shape[-1]), self.alpha), {}

    def summary(self) -> dict:
        return {"name": self.name, "k": self.k, "alpha": self.alpha}


class ASFT(Objective):
    """DFT anchored to the base model: + ``lam`` · KL(π_θ ‖ π_base) on the answer tokens (the base: see
    ``BaseLogits``)."""

    name = "asft"

    def __init__(self, lam: float = 0.1):
        check_number("objective.lam", lam, 0)
        self.lam = lam
        self.base = BaseLogits()

    def attach(self, backbone, engine: type[Engine]) -> None:
        self.base.attach(backbone, engine, "objective=asft")

    def base_tokens(self, module, batch: dict) -> AnswerTokens:
        """The base model's logits at the batch's answer tokens, images included."""
        return self.base(module, batch["model_inputs"], batch["labels"])

    def loss(self, module, batch, outputs):
        tokens = outputs.tokens
        kl = kl_to_base(tokens, self.base_tokens(module, batch).logits)
        return dft_loss(tokens) + self.lam * kl, {"kl_to_base": kl.detach()}

    def summary(self) -> dict:
        return {"name": self.name, "lam": self.lam}
