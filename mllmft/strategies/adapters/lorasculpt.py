"""LoRASculpt (Liang et al., "LoRASculpt: Sculpting LoRA for Harmonizing General and Specialized Knowledge
in Multimodal Large Language Models", CVPR 2025; the authors' code: LiangJian24/LoRASculpt,
``llava/train/LoRASculpt_Trainer.py``): LoRA whose factors are made sparse after a warm-up and kept sparse,
and a conflict-aware regulariser that keeps the update off the pre-trained weights of large magnitude.

1. LoRA on the linears of the LLM's blocks (q, k, v, o, gate, up, down), as ``strategy=lora``.
2. Conflict-aware regularisation, added to the loss at every step: for each LoRA module named in
   ``car_modules`` (the authors': q, k and v), with W0 its frozen pre-trained weight,

       M̂ = W0 / ‖W0‖_F,    S = |1 / ln(|M̂| + 1e-15)|,    M = tanh(ω · S)     (no gradient: a function of W0)
       R = λ · mean over the modules of ‖M ⊙ (B A)‖_F

   M grows with |W0|, so moving a large pre-trained weight costs more.
3. After ``sparsify_after`` optimizer steps, in each LoRA factor (A and B apart, each tensor on its own) the
   ``keep`` share of entries largest in magnitude stays (k = ⌊keep · numel⌋), the rest is set to zero;
4. after every later step the entries outside that mask are set to zero again (Adam's moments stay).

Choices where the code differs from a clean reading or is silent: B A enters R unscaled (no α / r) and the
norm is not squared, as the code; the mask is applied right after each optimizer step, where the code
zeroes before each forward, which leaves its last update dense; the mask is part of the checkpoint (the
code's is lost on resume); M is recomputed from W0 each step, as the code, and again in the backward (each term
is checkpointed: no tensor of W0's size is kept between the forward and the backward).
The regulariser reads each module's whole factors and base weight at every step, which FSDP2 and ZeRO
hold only in parts outside the forward: with ``car_lambda > 0`` it runs on one device or under DDP; the
sparsity alone (``car_lambda=0``) runs on every engine (the masks are chosen across the ranks' parts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch.utils.checkpoint import checkpoint

from mllmft.backbones import Backbone
from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.strategies.adapters.peft_adapters import LoRA
from mllmft.strategies.core import tensor_stats
from mllmft.strategies.core.contract import tensor_nbytes


def conflict_weights(base: torch.Tensor, omega: float) -> torch.Tensor:
    """M = tanh(ω · |1 / ln(|W0| / ‖W0‖_F + 1e-15)|), in fp32."""
    w = base.detach().float()
    return torch.tanh(omega * (1.0 / torch.log(w.abs() / torch.linalg.norm(w) + 1e-15)).abs())


def is_factor(name: str) -> bool:
    """A LoRA factor's weight (peft's ``lora_A`` / ``lora_B``)."""
    return ".lora_A." in name or ".lora_B." in name


class LoRASculpt(LoRA):
    """LoRA with sparse factors after ``sparsify_after`` steps and the conflict-aware regulariser."""

    writes_weights = True

    def __init__(
        self,
        keep: float = 0.1,
        sparsify_after: int = 100,
        car_lambda: float = 1e-3,
        omega: float = 1.0,
        car_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
        **lora_options,
    ):
        super().__init__(**lora_options)
        check_number("strategy.keep", keep, 0, 1, low_open=True)
        check_number("strategy.sparsify_after", sparsify_after, 1, integer=True)
        check_number("strategy.car_lambda", car_lambda, 0)
        check_number("strategy.omega", omega, 0, low_open=True)
        self.keep, self.sparsify_after = keep, sparsify_after
        self.car_lambda, self.omega, self.car_modules = car_lambda, omega, tuple(car_modules)
        if car_lambda > 0:
            self.unsharded_only = (
                "its conflict-aware term multiplies each q/k/v module's whole LoRA factors and base weight at every "
                "step, which the sharded engines hold only in parts outside the forward (strategy.car_lambda=0 "
                "keeps the sparsity alone, which shards)"
            )
        self.regularised: list[Any] = []  # peft's LoraLayer modules of car_modules
        self.kept: dict[str, torch.Tensor] = {}  # this rank's part of each factor: True where an entry stays

    def attach(self, backbone: Backbone) -> None:
        super().attach(backbone)
        self.regularised = [
            module
            for name, module in backbone.model.named_modules()
            if isinstance(module, LoraLayer) and name.rsplit(".", 1)[-1] in self.car_modules
        ]
        if self.car_lambda > 0 and not self.regularised:
            raise ConfigError(
                f"strategy.car_modules={list(self.car_modules)} names none of the adapted linears; name the query, "
                "key and value projections of this model's attention, or set strategy.car_lambda=0"
            )

    def extra_loss(self, module, batch: dict, outputs) -> torch.Tensor | None:
        if self.car_lambda == 0 or not self.regularised:
            return None
        terms = []
        for layer in self.regularised:
            for adapter in layer.active_adapters:
                a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                # recomputed in the backward: M and B A (each W0's size, fp32) are not kept until then
                term = checkpoint(self._term, a, b, layer.get_base_layer().weight, use_reentrant=False)
                terms.append(term)
        car = self.car_lambda * torch.stack(terms).mean()
        module.log("lorasculpt/car", car.detach(), batch_size=len(batch["ids"]))
        return car

    def _term(self, a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """‖M ⊙ (B A)‖_F."""
        return torch.linalg.norm(conflict_weights(base, self.omega) * (b.float() @ a.float()))

    def start(self, ctx) -> None:
        self.kept = {f.name: self.kept[f.name].to(f.values().device) for f in ctx.fragments if f.name in self.kept}

    def after_step(self, ctx) -> None:
        factors = [f for f in ctx.fragments if is_factor(f.name)]
        if not self.kept and ctx.step + 1 >= self.sparsify_after:  # the warm-up's last step was just taken
            ks = [int(self.keep * f.numel) for f in factors]
            masks = tensor_stats.top_k_masks(ctx.engine, [f.values().abs() for f in factors], ks)
            self.kept = {f.name: mask for f, mask in zip(factors, masks)}
        for f in factors:
            if f.name in self.kept:
                f.values().mul_(self.kept[f.name])
                if ctx.logging:
                    ctx.mask_stats.add(f.name, self.kept[f.name])

    def state_nbytes(self) -> int:
        return tensor_nbytes(self.kept)

    def state_dict(self) -> dict:
        return {"kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.kept = dict(state.get("kept", {}))
