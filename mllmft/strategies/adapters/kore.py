"""KORE's constraint (Jiang et al., "KORE: Enhancing Knowledge Injection for Large Multimodal Models via
Knowledge-Oriented Augmentations and Constraints"; the authors' code KORE-LMM/KORE, its LoRA-Null part:
``act_aware_utils.calib_cov_distribution``, ``decomposition.decompose_to_adapter2``, ``train_v2``): LoRA
initialised in the null space of what the model knew, its down-projection frozen, so the update moves
little of the outputs on inputs like those it was pre-trained on. (KORE's augmentations are data: a
generated multi-turn corpus, not a tuning method; bring it as data.)

For each adapted linear W (d_out × d_in) of the LLM's blocks:

1. The inputs' covariance on calibration prompts (the upstream sets' train prompts: image and question,
   no answer, one sample per forward): C = Σ_samples X̃ᵀ X̃ / n, X̃ = X / |max X| (the sample's tokens × d_in,
   image tokens included; no centring), as the code.
2. Its null space: Q = the eigenvectors of C of the r smallest eigenvalues (d_in × r).
3. W's part on it, T = W Q Qᵀ, as LoRA factors: with W Q = U S Rᵀ (an SVD of d_out × r),
   A = √(S/s) (Q R)ᵀ (r × d_in), B = U √(S/s) (d_out × r), s = α / r peft's scale, so s · B A = T.
4. The frozen base becomes W − T: at initialisation the model is unchanged (W − T + s B A = W).
5. A is frozen (the code's v2: only the up-projection trains), so every update ΔW = s ΔB A has its rows in
   span(Q): ΔW x ≈ 0 for the inputs C describes.

Choices: peft's covariance hook and KORE's agree but for the divisor (n here, the code's constant 256:
a scale, which leaves the eigenvectors as they are); ``samples`` prompts in all (the code's 256: 64 from
each of four sets), split evenly over the upstream sets, the first of each train split; eigenvectors by
``eigh`` in float64 (the code: an SVD of C, the same vectors for a symmetric C). The initialisation is
computed when the run is built, on the whole weights (so it shards under every engine, and an evaluation
of a checkpoint rebuilds the same frozen A and W − T before loading the trained B).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mllmft.backbones import Backbone
from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.hardware import on_compute_device
from mllmft.strategies.adapters.peft_adapters import PEFT_ROOT, LoRA


def input_covariances(backbone: Backbone, names: list[str], prompts: list[dict]) -> dict[str, torch.Tensor]:
    """{linear: Σ X̃ᵀX̃ / n} over ``prompts`` (collated model inputs, one sample each), X̃ = X / |max X|, fp64."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def add(_module, args, _output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            x = x / x.max().abs().clamp(min=1e-12)
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x

        return add

    handles = [backbone.model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with on_compute_device(backbone.model) as device, torch.no_grad():
            for inputs in prompts:
                backbone.model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
    finally:
        for handle in handles:
            handle.remove()
    return {n: (s / len(prompts)).cpu() for n, s in sums.items()}


def null_space_factors(weight: torch.Tensor, covariance: torch.Tensor, r: int, scale: float):
    """(A, B, T): A (r × d_in) and B (d_out × r) with scale · B A = T = W Q Qᵀ, Q the eigenvectors of the
    r smallest eigenvalues of ``covariance``; in ``weight``'s dtype."""
    w = weight.detach().double().cpu()
    _, vectors = torch.linalg.eigh(covariance.double())  # ascending eigenvalues
    q = vectors[:, :r]
    u, s, rt = torch.linalg.svd(w @ q, full_matrices=False)
    root = (s / scale).sqrt()
    a = root[:, None] * (q @ rt.T).T
    b = u * root[None, :]
    return a.to(weight.dtype), b.to(weight.dtype), (scale * b @ a).to(weight.dtype)


def frozen_weight(linear: nn.Linear, value: torch.Tensor) -> None:
    """``linear``'s weight as a buffer holding ``value``: it computes and saves as the weight did, and no
    optimizer or peft switch can make it train (peft makes an adapter's parameters trainable again whenever
    its adapters are enabled, e.g. after a base-model forward)."""
    del linear.weight
    linear.register_buffer("weight", value.contiguous())


class KORE(LoRA):
    """LoRA initialised in the null space of the upstream inputs' covariance, A frozen."""

    moves_base = "KORE moves the base's part on the calibration inputs' null space into its adapters"
    adapter_buffers = True

    def __init__(self, calibration: Mapping | None = None, samples: int = 256, max_length: int = 128, **lora_options):
        super().__init__(**lora_options)
        init = self.options["init_lora_weights"]
        if init not in (True, False, "gaussian"):  # peft's would rewrite the base before KORE reads it
            raise ConfigError(f"strategy.init={init}: KORE sets the adapters itself; leave strategy.init true")
        check_number("strategy.samples", samples, 1, integer=True)
        check_number("strategy.max_length", max_length, 1, integer=True)
        if not calibration:
            raise ConfigError(
                "strategy=kore initialises its adapters in the null space of the upstream sets' inputs, and "
                "strategy.calibration (data.upstream by default) is empty: add an upstream set"
            )
        self.calibration = dict(calibration)
        self.samples, self.max_length = samples, max_length

    def calibration_prompts(self, backbone: Backbone) -> list[dict]:
        """The first prompts of each upstream set's train split, collated one per batch as for generation."""
        collate = backbone.collator(self.max_length, generate=True)
        per_set = max(1, self.samples // len(self.calibration))
        prompts = []
        for _, source in sorted(self.calibration.items()):
            for i, record in enumerate(source.records("train")[:per_set]):
                prompts.append(collate([(i, record, record.load_images())])["model_inputs"])
        return prompts

    def attach(self, backbone: Backbone) -> None:
        trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
        targets = self._target_linears(backbone, trainable)
        r = int(self.options["r"])
        inputs = {t: backbone.model.get_submodule(t).in_features for t in targets}
        small = [t for t in targets if inputs[t] <= r]
        if small:
            raise ConfigError(
                f"strategy.r={r} leaves no null space in {small[0]} ({inputs[small[0]]} inputs): choose r below the "
                "adapted linears' input size"
            )
        covariances = input_covariances(backbone, targets, self.calibration_prompts(backbone))
        super().attach(backbone)
        alpha = float(self.options["lora_alpha"])
        scale = alpha / r**0.5 if self.options["use_rslora"] else alpha / r  # peft's scaling
        with torch.no_grad():
            for name in targets:
                layer = backbone.model.get_submodule(PEFT_ROOT + name)
                base: nn.Linear = layer.get_base_layer()
                a, b, t = null_space_factors(base.weight, covariances[name], r, scale)
                for adapter in layer.active_adapters:
                    layer.lora_B[adapter].weight.copy_(b)
                    frozen_weight(layer.lora_A[adapter], a)  # only the up-projection trains
                base.weight.sub_(t.to(base.weight.device))
