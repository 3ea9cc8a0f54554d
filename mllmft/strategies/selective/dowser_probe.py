"""Model-Dowser's data-free probe: how much each weight of each LLM
linear matters to what the model already does, measured on text the model writes itself.

* Synthetic inputs, as the authors' ``llava_importance_self_gen_prompt.py`` (nguyendinhson-kaist/Model-Dowser)
  writes them: each row a start of BOS + 1-5 random ids of the base vocabulary (special ids become BOS),
  the starts right-padded with BOS (masked out) to the batch's longest; the model samples (temperature 0.9,
  top-p 0.9, repetition penalty 1.05) until every row has ended or the batch holds ``length`` tokens. Only
  what it wrote is scored — the authors generate from the start's embeddings, so their output holds the new
  tokens alone — with the padding it writes after a row's end, attended like the rest (their mask is all
  ones). One deviation: generating from ids, the repetition penalty also sees the start's few tokens.
* Output sensitivity (Hutchinson): on each batch, ``passes`` Rademacher vectors ξ over the vocabulary;
  s = Σ(ξ ⊙ logits at the last position) / B, one backward each; ψ_i = mean |∂s/∂y_i| over batch and
  tokens, y the linear's output (``psi="rms"``: sqrt of the mean square, the paper's E[g²] form).
  E_ξ[(ξᵀ J e_i)²] = ‖J e_i‖², so the RMS form estimates the Jacobian column norm without bias.
* Activation: a_j = mean |x_j| over batch and tokens of the linear's input.
* Score of W_ij: the mean over all passes (weighted by batch size) of ψ_i·|W_ij|·a_j: a mean of
  products, not a product of means. A running sum per tensor: 4 bytes per scored weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mllmft.console import progress

PSI_MODES = ("abs", "rms")


def synthetic_sequences(
    model: Any, tokenizer, count: int, length: int, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """``count`` sequences the model writes from short random starts, in batches: the generated tokens of
    each (at most ``length`` minus the batch's longest start), padding after a row's end included."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    config = model.generation_config  # the pad the model writes after a row's end, as HF's default
    pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    batches = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        prefixes = torch.randint(1, 6, (size,), generator=generator)  # each row its own length
        longest = 1 + int(prefixes.max())
        ids = torch.randint(0, tokenizer.vocab_size, (size, longest), generator=generator)
        ids[torch.isin(ids, special)] = bos
        ids[:, 0] = bos
        attention = torch.arange(longest)[None, :] <= prefixes[:, None]
        ids[~attention] = bos  # right padding, masked out
        with torch.random.fork_rng(devices=[]):  # sampling draws from the global generator: seed a fork of it
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=attention.long().to(device),
                do_sample=True,
                temperature=0.9,
                top_p=0.9,
                repetition_penalty=1.05,
                max_new_tokens=length - longest,
                pad_token_id=pad,
            )
        batches.append(out[:, longest:])
    return batches


def probe_scores(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    batches: list[torch.Tensor],
    passes: int = 8,
    psi: str = "abs",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """{name: score of every entry of the linear's weight}, fp32 on the CPU (see above)."""
    sums = {name: torch.zeros(linear.weight.shape, dtype=torch.float32) for name, linear in targets.items()}
    activations: dict[str, torch.Tensor] = {}
    sensitivities: dict[str, torch.Tensor] = {}
    outputs: list[tuple[str, torch.Tensor]] = []

    def forward_hook(name):
        def hook(module, inputs, output):
            activations[name] = inputs[0].detach().abs().float().reshape(-1, inputs[0].shape[-1]).mean(0)
            outputs.append((name, output))

        return hook

    handles = [linear.register_forward_hook(forward_hook(name)) for name, linear in targets.items()]
    trainable = {name: linear.weight.requires_grad for name, linear in targets.items()}
    for linear in targets.values():  # the outputs must be in the graph, frozen or not
        linear.weight.requires_grad_(True)
    was_training = model.training
    model.eval()
    total = 0
    try:
        for ids in progress(batches, "Model-Dowser probe", len(batches), min_total=1):
            outputs.clear()
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
            for _ in range(passes):
                xi = torch.randint(0, 2, logits.shape, generator=generator).to(logits) * 2 - 1
                s = (xi * logits).sum() / ids.shape[0]
                grads = torch.autograd.grad(s, [o for _, o in outputs], retain_graph=True, allow_unused=True)
                for (name, output), g in zip(outputs, grads):
                    g = torch.zeros_like(output) if g is None else g
                    flat = g.detach().float().reshape(-1, g.shape[-1])
                    sensitivities[name] = flat.abs().mean(0) if psi == "abs" else flat.square().mean(0).sqrt()
                for name, linear in targets.items():  # each pass's product in the model's dtype, as the authors
                    weight = linear.weight.detach().abs()
                    score = sensitivities[name].to(weight.dtype)[:, None] * weight
                    score = score * activations[name].to(weight.dtype)[None, :]
                    sums[name].add_(score.float().cpu(), alpha=ids.shape[0])
                total += ids.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        for name, linear in targets.items():
            linear.weight.requires_grad_(trainable[name])
        model.train(was_training)
    return {name: s.div_(max(1, total)) for name, s in sums.items()}
