"""The KL that predicts forgetting: how far the tuned model's answers have moved from the base model's,
per data set, measured at every evaluation ("RL's Razor", arXiv 2509.04259: the forward KL between the
base and the tuned model on the new task predicts forgetting).

Before training, the first ``samples`` test records of the target and of each upstream set go through
the base model, teacher-forced on their reference answers, and at each answer token the base's top
``top_k`` log-probabilities are kept (samples × answer tokens × k numbers: bounded, whatever the
vocabulary). At each validation and test the model runs on the same inputs, and

    KL(π_base ‖ π_θ) = Σ_{v ∈ top k of π_base} p̃_base(v) · (log p̃_base(v) − log p̃_θ(v)),

both distributions renormalised over the base's top k (so an unchanged model measures exactly 0), is
averaged over each set's answer tokens: logged as ``probe/kl/<set>``, and the final test's recorded in
results.json (``probe_kl``). ``mllmft-report`` plots forgetting against it over a sweep's runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import lightning as L
import torch

from mllmft.answer_logits import AnswerTokens, answer_tokens
from mllmft.checks import check_number
from mllmft.objectives.base import base_model, on_device


@dataclass
class ProbeSet:
    """One data set's probe: collated batches (on the host) and the base's top k at each answer token."""

    name: str
    batches: list[dict] = field(default_factory=list)
    top_indices: list[torch.Tensor] = field(default_factory=list)  # [answer tokens, k] per batch
    top_log_probs: list[torch.Tensor] = field(default_factory=list)


def renormalised(log_probs: torch.Tensor) -> torch.Tensor:
    return log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True)


class KLProbe(L.Callback):
    """Measures KL(π_base ‖ π_θ) on a fixed probe set at every validation and test (``prepare`` first)."""

    def __init__(self, samples: int = 16, top_k: int = 32):
        check_number("probe.samples", samples, 1, integer=True)
        check_number("probe.top_k", top_k, 2, integer=True)
        self.samples, self.top_k = samples, top_k
        self.sets: list[ProbeSet] = []

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, datamodule, device: torch.device) -> None:
        """The probe inputs and the base model's top k, from ``model`` as loaded (before any training)."""
        # whole conversations of test records, whose prompts alone were bound by max_length: no bound here
        collate = datamodule.collator_class(datamodule.processor, sys.maxsize, False)
        self.sets = []
        for source in datamodule.test_sources():
            records = datamodule.split(source, "test", generate=True).records[: self.samples]
            probe = ProbeSet(source.name)
            for start in range(0, len(records), datamodule.eval_batch_size):
                items = [
                    (i, r, r.load_images()) for i, r in enumerate(records[start : start + datamodule.eval_batch_size])
                ]
                batch = collate(items)
                with base_model(model, untrained=True):  # prepared before training
                    tokens = self._answer_tokens(model, batch, device)
                top = torch.log_softmax(tokens.logits, dim=-1).topk(min(self.top_k, tokens.logits.shape[-1]), dim=-1)
                probe.batches.append({"model_inputs": batch["model_inputs"], "labels": batch["labels"]})
                probe.top_indices.append(top.indices.cpu())
                probe.top_log_probs.append(renormalised(top.values).cpu())
            self.sets.append(probe)

    @staticmethod
    def _answer_tokens(model, batch: dict, device: torch.device) -> AnswerTokens:
        return answer_tokens(model, on_device(batch["model_inputs"], device), batch["labels"].to(device))

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """{set: mean KL(π_base ‖ π_θ) over its answer tokens} for ``model`` now (every rank the same)."""
        out = {}
        for probe in self.sets:
            total, count = 0.0, 0
            for batch, indices, base_log_probs in zip(probe.batches, probe.top_indices, probe.top_log_probs):
                tokens = self._answer_tokens(model, batch, device)
                tuned = renormalised(torch.log_softmax(tokens.logits, dim=-1).gather(1, indices.to(device)))
                base = base_log_probs.to(device)
                total += float((base.exp() * (base - tuned)).sum())
                count += len(indices)
            out[probe.name] = total / max(count, 1)
        return out

    def _log(self, pl_module) -> None:
        for name, kl in self.measure(pl_module.model, pl_module.device).items():
            pl_module.log(f"probe/kl/{name}", kl, add_dataloader_idx=False)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(pl_module)


def logged_probe(trainer: L.Trainer, names: list[str]) -> dict[str, float]:
    """The last logged KL of each set ({} when the run had no probe)."""
    metrics = trainer.callback_metrics
    return {n: float(metrics[f"probe/kl/{n}"]) for n in names if f"probe/kl/{n}" in metrics}
