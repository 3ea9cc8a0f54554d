"""The objective contract, and the per-token quantities every token-level objective is made of.

The module calls ``objective.loss(module, batch, outputs)`` in each training step, with the model's
outputs on the batch (``mllmft.answer_logits.AnswerOutputs``: ``tokens``, the answer tokens' logits, and
``loss``, their mean cross-entropy); the strategy's ``extra_loss`` is added to what it returns.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext

import torch

from mllmft.answer_logits import AnswerTokens, answer_tokens
from mllmft.data.collate import IGNORE_INDEX
from mllmft.engines import Engine
from mllmft.errors import ConfigError


def base_model(model: torch.nn.Module, untrained: bool = False) -> AbstractContextManager:
    """A context in which ``model`` computes as the base model: its adapters disabled (peft), else as it is
    (a strategy that changes the weights themselves has no base inside the model). Where the adapters hold
    part of the base (KORE, PiSSA, OLoRA) only the ``untrained`` model is the base, with its adapters on."""
    if getattr(model, "mllmft_moves_base", ""):
        if untrained:
            return nullcontext()
        raise ConfigError(f"the base model is not the model with its adapters disabled: {model.mllmft_moves_base}")
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else nullcontext()


class Objective:
    """A training objective; ``name`` is its ``objective=`` choice."""

    name = "sft"
    rewards_with_target_metric = False  # scores sampled answers with the target set's metric

    def attach(self, backbone, engine: type[Engine]) -> None:
        """Prepare what the loss needs beside the model, once the strategy has wrapped it, or refuse
        (ConfigError) what it cannot train with; ``engine``: the configured engine's class (``mllmft.engines``)."""

    def loss(self, module, batch: dict, outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of ``batch`` and what to log beside it (``train/<key>``)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """What results.json records under ``run.objective`` (the name and the knobs)."""
        return {"name": self.name}

    def state_dict(self) -> dict:
        """What must survive a checkpoint (in it as ``objective``); every rank calls it."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BaseLogits:
    """The base model's answer-token logits for an objective's KL term: the model with its adapters disabled under a
    peft strategy (no second copy, any engine), else a frozen copy taken when the run is built (one
    more model in memory; one device or DDP, since FSDP2 and DeepSpeed would need it sharded too)."""

    def __init__(self):
        self._frozen: torch.nn.Module | None = None

    def attach(self, backbone, engine: type[Engine], who: str) -> None:
        """``who`` names the setting that needs the base, for the refusal on a sharded engine."""
        if moved := getattr(backbone.model, "mllmft_moves_base", ""):
            raise ConfigError(
                f"{who} compares with the base model, which this strategy's adapters hold part of: {moved}"
            )
        if hasattr(backbone.model, "disable_adapter"):
            return
        if engine.sharded:
            raise ConfigError(
                f"{who} without adapters keeps an unsharded copy of the base model for its KL term, which "
                f"{engine.name} does not shard: use a peft strategy (strategy=lora: the base is the model with its "
                "adapters disabled) or hardware=ddp"
            )
        self._frozen = copy.deepcopy(backbone.model).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, module, inputs: dict, labels: torch.Tensor) -> AnswerTokens:
        """The base model's logits at the answer positions of ``inputs`` (on the module's device), images
        included."""
        if self._frozen is None:
            with base_model(module.model):
                return answer_tokens(module.model, inputs, labels)
        self._frozen.to(module.device)
        return answer_tokens(self._frozen, inputs, labels)


def on_device(inputs: dict, device: torch.device) -> dict:
    """A collated batch's model inputs on ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def encode_answered(module, items, extra_tokens: int) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels) of ``items`` (records whose last answer the objective chose), on the module's
    device, labels on the last answer only: an earlier turn of a multi-turn record is the reference's,
    not the objective's. The length bound leaves room for ``extra_tokens`` generated ones."""
    datamodule = module.trainer.datamodule
    encoded = datamodule.collator_class(module.backbone.processor, datamodule.max_length + extra_tokens)(
        items.collator_items()
    )
    return on_device(encoded["model_inputs"], module.device), last_answer_only(encoded["labels"]).to(module.device)


def last_answer_only(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` with every supervised span but each row's last set to IGNORE_INDEX."""
    out = labels.clone()
    supervised = labels != IGNORE_INDEX
    for row in range(labels.shape[0]):
        positions = supervised[row].nonzero()[:, 0].tolist()
        start = len(positions) - 1
        while start > 0 and positions[start - 1] == positions[start] - 1:
            start -= 1
        if positions:
            out[row, : positions[start]] = IGNORE_INDEX
    return out
