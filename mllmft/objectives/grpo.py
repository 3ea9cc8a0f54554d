"""GRPO (Shao et al. 2024, DeepSeekMath; as TRL's GRPOTrainer): reinforcement learning with the target
set's own metric as a verifiable reward. "RL's Razor" (arXiv 2509.04259) reports that RL fine-tuning
forgets far less than SFT.

For each prompt of a training batch, ``group_size`` answers are sampled from the current model; each is
scored by the target set's metric against the references (exact match, VQA accuracy, option match,
CIDEr: the reward); advantages are normalised within each prompt's group, A = (r − mean) / (std + 1e-4);
and the loss over every answer token t of every sampled answer is TRL's

    −min(ρ_t · A, clip(ρ_t, 1 − ε, 1 + ε) · A) + β · (exp(log π_base − log π_θ) − (log π_base − log π_θ) − 1),

ρ_t = π_θ(y_t) / π_old(y_t), with π_old the sampling policy (one update per sample, as TRL's default: ρ = 1
in value, its gradient the policy gradient), averaged over the batch's answer tokens. The answers are
re-encoded with the chat template (as text, as the test scores them). Sampling is seeded per (seed, step,
the micro-batch's place in the global batch), so a resumed run draws the same answers, and ranks draw
what one process accumulating their batches in turn would. The base for β > 0 is the one ASFT uses.

``reward`` replaces the metric by a function of your own (a dotted path, as TRL's ``reward_funcs``):
``fn(answers: list[mllmft.metrics.generated.Answer]) -> list[float]``, each answer with its prompt,
prediction, references and options.

A group whose answers all score the same (all wrong, at the start of training on a new task) has zero
advantage and teaches nothing: ``sft_warmup_steps`` optimizer steps of plain SFT first give the model
answers worth rewarding (the built-in job's base model scores 0 on its target).
"""

from __future__ import annotations

import hashlib
import math

import torch

from mllmft.answer_logits import answer_tokens
from mllmft.checks import check_number, check_seed
from mllmft.config import import_object
from mllmft.engines import Engine
from mllmft.errors import ConfigError
from mllmft.metrics.generated import Answer
from mllmft.objectives.base import BaseLogits, Objective, encode_answered, on_device


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r − mean) / (std + eps) within each row (a prompt's group of answers), std with Bessel's correction."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float,
    beta: float = 0.0,
    base_log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over tokens of −min(ρ·A, clip(ρ)·A) + β·k3(π_θ, π_base); every argument per token, [N]."""
    ratio = torch.exp(log_probs - old_log_probs)
    per_token = -torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)
    if beta:
        assert base_log_probs is not None, "β > 0 needs the base model's log-probabilities"
        delta = base_log_probs - log_probs
        per_token = per_token + beta * (torch.exp(delta) - delta - 1)
    return per_token.mean()


class GRPO(Objective):
    """Group-relative policy optimisation with the target set's metric as the reward."""

    name = "grpo"

    def __init__(
        self,
        group_size: int = 4,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        epsilon: float = 0.2,
        beta: float = 0.0,
        sft_warmup_steps: int = 0,
        seed: int = 0,
        reward: str | None = None,
    ):
        check_number("objective.group_size", group_size, 2, integer=True)
        check_number("objective.temperature", temperature, 0, low_open=True)
        check_number("objective.top_p", top_p, 0, 1, low_open=True)
        if max_new_tokens is not None:
            check_number("objective.max_new_tokens", max_new_tokens, 1, integer=True)
        check_number("objective.epsilon", epsilon, 0)
        check_number("objective.beta", beta, 0)
        check_number("objective.sft_warmup_steps", sft_warmup_steps, 0, integer=True)
        check_seed("objective.seed", seed)
        self.group_size, self.temperature, self.top_p = group_size, temperature, top_p
        self.max_new_tokens, self.epsilon, self.beta = max_new_tokens, epsilon, beta
        self.sft_warmup_steps, self.seed = sft_warmup_steps, seed
        self.reward = reward
        self.reward_fn = import_object(reward, "objective.reward") if reward else None
        if self.reward_fn is not None and not callable(self.reward_fn):
            raise ConfigError(f"objective.reward={reward!r} is a {type(self.reward_fn).__name__}, not a function")
        # the target set's metric does not score the replayed samples of other sets (a function may)
        self.rewards_with_target_metric = self.reward_fn is None
        self.base = BaseLogits()

    def attach(self, backbone, engine: type[Engine]) -> None:
        if self.beta:
            self.base.attach(backbone, engine, "objective=grpo with objective.beta > 0")

    def loss(self, module, batch, outputs):
        if module.global_step < self.sft_warmup_steps:  # plain SFT on the references first
            return outputs.loss, {}
        items = batch["items"].repeated(self.group_size)  # each prompt group_size times, in turn
        answers = self.sample(module, items)
        rewards = torch.tensor(self.rewards(module, items, answers), dtype=torch.float32)
        advantages = group_advantages(rewards.view(-1, self.group_size))
        inputs, labels = encode_answered(module, items.answered(answers), self.answer_length(module) + 8)
        tokens = answer_tokens(module.model, inputs, labels)
        log_probs = tokens.target_log_probs()
        per_token_advantage = advantages.reshape(-1).to(module.device)[tokens.rows]
        base = None
        if self.beta:
            base = self.base(module, inputs, labels).target_log_probs()
        loss = clipped_policy_loss(log_probs, log_probs.detach(), per_token_advantage, self.epsilon, self.beta, base)
        return loss, {"reward": rewards.mean(), "reward_std": rewards.view(-1, self.group_size).std(1).mean()}

    def answer_length(self, module) -> int:
        """The longest sampled answer: ``max_new_tokens``, else the target set's own test length (a short-answer
        set's 8 tokens, a caption set's 64): an answer longer than the test decodes cannot score there."""
        return self.max_new_tokens or module.test_lengths[0]

    def sample(self, module, items) -> list[str]:
        """One sampled answer per item, seeded without touching the global RNG."""
        datamodule = module.trainer.datamodule
        prompts = datamodule.collator_class(module.backbone.processor, datamodule.max_length, True)(
            items.collator_items()
        )
        inputs = on_device(prompts["model_inputs"], module.device)
        devices = [module.device] if module.device.type == "cuda" else []
        # the stream: the micro-batch's place in the optimizer step's global batch, so one process that
        # accumulates the ranks' batches in turn draws what the ranks draw (engines equal one process)
        accumulate = module.trainer.accumulate_grad_batches
        stream = module.global_rank * accumulate + module.trainer.fit_loop.epoch_loop.batch_idx % accumulate
        key = hashlib.sha256(f"{self.seed},{stream},{module.global_step}".encode()).digest()
        training = module.model.training
        module.model.eval()  # no dropout while sampling (and the KV cache stays on)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int.from_bytes(key[:7], "big"))
                return module.generate(
                    inputs, self.answer_length(module), do_sample=True, temperature=self.temperature, top_p=self.top_p
                )
        finally:
            module.model.train(training)

    def rewards(self, module, items, answers: list[str]) -> list[float]:
        """``reward``'s function per answer, else the target set's metric (the module's own: its ``score``
        keeps no state)."""
        scored = [
            Answer(i, r.id, r.prompt_turns[-1].text, answer, r.answers, r.options)
            for i, (r, answer) in enumerate(zip(items.records, answers))
        ]
        rewards = self.reward_fn(scored) if self.reward_fn is not None else module.test_metric(0).score(scored)[1]
        rewards = [float(r) for r in rewards]
        if len(rewards) != len(answers) or not all(math.isfinite(r) for r in rewards):
            raise ValueError(f"objective.reward={self.reward}: expected {len(answers)} finite rewards, got {rewards}")
        return rewards

    def summary(self) -> dict:
        knobs = (
            "group_size",
            "temperature",
            "top_p",
            "max_new_tokens",
            "epsilon",
            "beta",
            "sft_warmup_steps",
            "reward",
        )
        return {"name": self.name, **{k: getattr(self, k) for k in knobs}}
