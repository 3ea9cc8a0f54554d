"""GRPO (objective=grpo): group advantages, the clipped objective and its KL against a reference written
from the formulas, a rewarded answer's probability rising after a step, the rewards from the target's
metric, and runs (seeded sampling: the same seed, the same weights)."""

import numpy as np
import pytest
import torch

from mllmft import api
from mllmft.data.batch_items import BatchItems
from mllmft.objectives.grpo import clipped_policy_loss, group_advantages

# the random tiny model answers nothing right: a reward that tells its answers apart (their length)
REWARD = "objective.reward=tests.helpers.plugins.answer_length_reward"


def test_group_advantages_normalise_within_each_prompts_group():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0]])
    expected = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(group_advantages(torch.tensor(rewards)).numpy(), expected, rtol=1e-6)
    assert not group_advantages(torch.tensor(rewards))[2].any()  # all equal: nothing to learn


def test_the_clipped_objective_and_its_kl_match_the_formulas():
    rng = np.random.default_rng(0)
    new, old, base = rng.normal(size=12) - 2, rng.normal(size=12) - 2, rng.normal(size=12) - 2
    advantages = rng.normal(size=12)
    ratio = np.exp(new - old)
    surrogate = -np.minimum(ratio * advantages, np.clip(ratio, 0.8, 1.2) * advantages)
    k3 = np.exp(base - new) - (base - new) - 1
    t = [torch.tensor(x) for x in (new, old, advantages, base)]
    assert float(clipped_policy_loss(t[0], t[1], t[2], 0.2)) == pytest.approx(surrogate.mean(), rel=1e-9)
    with_kl = clipped_policy_loss(t[0], t[1], t[2], 0.2, beta=0.04, base_log_probs=t[3])
    assert float(with_kl) == pytest.approx((surrogate + 0.04 * k3).mean(), rel=1e-9)


def test_a_rewarded_answers_probability_rises_after_one_step():
    """A toy policy over 6 answers: the answer rewarded 1 (the others 0) is sampled, and one step on the
    group's objective makes it more likely; an unrewarded one less."""
    torch.manual_seed(0)
    logits = torch.zeros(6, requires_grad=True)
    group = torch.tensor([3, 1, 4, 1])  # sampled answers; 3 is the right one
    rewards = (group == 3).float()
    log_probs = torch.log_softmax(logits, 0)[group]
    loss = clipped_policy_loss(log_probs, log_probs.detach(), group_advantages(rewards[None])[0], 0.2)
    loss.backward()
    with torch.no_grad():
        after = torch.log_softmax(logits - 0.5 * logits.grad, 0)
    before = torch.log_softmax(torch.zeros(6), 0)
    assert after[3] > before[3] and after[1] < before[1]


def test_rewards_are_the_target_sets_metric_per_answer_or_a_function_of_your_own(compose):
    from mllmft.errors import ConfigError
    from mllmft.objectives import GRPO

    parts = api.build(compose("objective=grpo"))
    parts.datamodule.setup("fit")
    batch = next(iter(parts.datamodule.train_dataloader()))
    items: BatchItems = batch["items"]
    answers = [r.answers[0] if i % 2 == 0 else "wrong" for i, r in enumerate(items.records)]
    rewards = parts.module.objective.rewards(parts.module, items, answers)
    assert rewards == [1.0 if i % 2 == 0 else 0.0 for i in range(len(items))]
    own = GRPO(reward="tests.helpers.plugins.answer_length_reward")  # objective.reward=<dotted path>
    assert own.rewards(parts.module, items, answers) == [float(len(a) % 3) for a in answers]
    assert not own.rewards_with_target_metric  # so replay may join it
    with pytest.raises(ConfigError, match=r"^objective.reward='nope.reward' does not import"):
        GRPO(reward="nope.reward")
    with pytest.raises(ConfigError, match=r"^objective.reward='math.pi' is a float, not a function"):
        GRPO(reward="math.pi")
    # a sampled answer is as long as the target set decodes at test time, unless max_new_tokens says otherwise
    assert parts.module.objective.answer_length(parts.module) == parts.module.test_lengths[0] == 8
    assert GRPO(max_new_tokens=3).answer_length(parts.module) == 3
    answered = items.repeated(2).answered(["x"] * (2 * len(items)))
    assert [r.id for r in answered.records][:2] == [items.records[0].id] * 2
    assert (
        answered.records[0].turns[-1].text == "x" and answered.records[0].prompt_turns == items.records[0].prompt_turns
    )


@pytest.mark.parametrize("strategy", ["spider", "lora"])
def test_grpo_trains_after_an_sft_warm_up_and_its_sampling_is_seeded(compose, monkeypatch, strategy):
    """The random tiny model answers nothing right: a reward that tells its answers apart (their length)
    makes the weights depend on what was sampled."""
    from mllmft.objectives.grpo import GRPO

    drawn: list[list[str]] = []
    sample = GRPO.sample
    monkeypatch.setattr(
        GRPO, "sample", lambda self, module, items: drawn.append(sample(self, module, items)) or drawn[-1]
    )

    def fit(seed):
        overrides = ["objective=grpo", "objective.sft_warmup_steps=1", "objective.group_size=2", REWARD]
        overrides += [
            "objective.max_new_tokens=4",
            f"objective.seed={seed}",
            f"strategy={strategy}",
            "trainer.max_steps=3",
        ]
        parts = api.build(compose(*overrides, "trainer.log_every_n_steps=1"))
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        assert "train/reward" in parts.trainer.callback_metrics and parts.trainer.global_step == 3
        return {n: p.detach().clone() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}

    first, again = fit(0), fit(0)
    assert drawn[0] == drawn[2] and drawn[1] == drawn[3]  # steps 1 and 2 of both runs: the same answers
    assert all(torch.equal(first[k], again[k]) for k in first)
    fit(1)
    assert drawn[4] != drawn[0]


def test_a_resumed_grpo_run_draws_the_same_answers_and_ends_equal(compose, tmp_path):
    from tests.helpers.runs import resume_equals_whole

    common = ["objective=grpo", "objective.group_size=2", "objective.max_new_tokens=4", "trainer.max_steps=4", REWARD]
    resume_equals_whole(compose, [*common, "trainer.limit_val_batches=0"], 2, tmp_path / "run")


def test_only_the_last_answer_of_a_conversation_is_the_objectives():
    from mllmft.objectives.base import last_answer_only

    ignore = -100
    labels = torch.tensor(
        [[ignore, 5, 6, ignore, ignore, 7, 8, ignore], [ignore, ignore, 3, 4, 2, ignore, ignore, ignore]]
    )
    expected = torch.tensor(
        [[ignore] * 5 + [7, 8, ignore], [ignore, ignore, 3, 4, 2, ignore, ignore, ignore]]
    )  # an earlier turn is the reference's
    assert torch.equal(last_answer_only(labels), expected)
