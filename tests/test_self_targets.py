"""Self-generated targets (objective=self_targets): the model's own right answers replace the references,
plain SFT where it has none (bit for bit), the targets kept in checkpoints (exact resume)."""

import pytest
import torch

from mllmft import api
from mllmft.objectives.grpo import GRPO
from tests.helpers.runs import resume_equals_whole

COMMON = ["objective=self_targets", "objective.samples=2", "objective.max_new_tokens=4", "objective.refresh_every=2"]


def _fit(compose, *overrides):
    parts = api.build(compose(*overrides, "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0"))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    return parts


def _weights(parts):
    return {n: p.detach().clone() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}


def test_without_a_right_answer_it_is_plain_sft_bit_for_bit(compose):
    """The random model answers nothing right: every prompt keeps its reference, and sampling (its own
    random stream) leaves the training's untouched."""
    sft, own = _fit(compose, "trainer.max_steps=3"), _fit(compose, *COMMON, "trainer.max_steps=3")
    assert own.module.objective.targets and not any(a for _, a in own.module.objective.targets.values())
    a, b = _weights(sft), _weights(own)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(own.trainer.callback_metrics["train/self_target_share"]) == 0.0


@pytest.fixture
def some_right(monkeypatch):
    """Answers of a length divisible by 3 count as right."""
    monkeypatch.setattr(
        GRPO, "rewards", staticmethod(lambda module, items, answers: [float(len(a) % 3 == 0) for a in answers])
    )


def test_its_own_right_answers_become_the_targets_and_are_redrawn(compose, some_right):
    parts = _fit(compose, *COMMON, "trainer.max_steps=4")
    targets = parts.module.objective.targets
    own = [a for _, a in targets.values() if a]
    assert own and all(len(a) % 3 == 0 for a in own)
    assert {step for step, _ in targets.values()} >= {0, 2}  # drawn at step 0, again once 2 steps old
    assert float(parts.trainer.callback_metrics["train/self_target_share"]) > 0
    assert _weights(parts).keys() and not all(
        torch.equal(a, b)
        for a, b in zip(_weights(parts).values(), _weights(_fit(compose, "trainer.max_steps=4")).values())
    )


def test_a_resumed_run_keeps_its_targets_and_ends_equal(compose, some_right, tmp_path):
    overrides = [*COMMON, "trainer.max_steps=5", "trainer.limit_val_batches=0"]
    first = resume_equals_whole(compose, overrides, 3, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["objective"]["targets"] == first.module.objective.targets
