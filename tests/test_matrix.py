"""Every strategy x every model family: one training step, or the start-up error the pair declares.

The whole matrix (276 pairs) is `slow` (make test-full, ~2 min on 2 cores); the fast suite runs every
strategy on the family whose quirks differ most from LLaVA's (Qwen2.5-VL: multimodal rotary
positions, the projector inside the vision module).
"""

import pytest
import torch

from mllmft import api
from mllmft.backbones import FAMILIES
from mllmft.errors import ConfigError
from tests.helpers.models import MODEL_CONFIGS, TINY_MODELS
from tests.helpers.runs import ALL_TRAINING_STRATEGIES

# pairs refused at start-up by design, with the reason in the error
DECLARED_UNSUPPORTED = {
    (strategy, f.name): "does not work with" for f in FAMILIES.values() for strategy in f.unsupported
}


def _one_step(compose, model, strategy):
    family = MODEL_CONFIGS[model].family
    overrides = [f"model={model}", f"strategy={strategy}", "scope=connector_llm", "trainer.max_steps=1"]
    if (strategy, family) in DECLARED_UNSUPPORTED:
        with pytest.raises(ConfigError, match=DECLARED_UNSUPPORTED[strategy, family]):
            api.build(compose(*overrides))
        return
    parts = api.build(compose(*overrides))
    model_ = parts.backbone.model
    before = {n: p.detach().clone() for n, p in model_.named_parameters() if p.requires_grad}
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert parts.trainer.global_step == 1
    assert any(not torch.equal(p, before[n]) for n, p in model_.named_parameters() if n in before)
    assert torch.isfinite(torch.tensor(float(parts.trainer.callback_metrics["train/loss"])))


@pytest.mark.parametrize("strategy", ALL_TRAINING_STRATEGIES)
def test_every_strategy_on_qwen2_5_vl(compose, strategy):
    _one_step(compose, "qwen2_5_vl_tiny", strategy)


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("strategy", ALL_TRAINING_STRATEGIES)
def test_every_strategy_on_every_family(compose, model, strategy):
    _one_step(compose, model, strategy)


# every objective's own code (answer tokens, the base's logits, sampling and re-encoding) on each family
OBJECTIVES = {
    "dft": [],
    "eaft": [],
    "asft": [],
    "self_targets": ["objective.samples=2", "objective.max_new_tokens=4"],
    "grpo": ["objective.group_size=2", "objective.max_new_tokens=4"],
}


def _one_objective_step(compose, model, objective):
    overrides = [f"model={model}", "strategy=full", "scope=connector_llm", "trainer.max_steps=1"]
    parts = api.build(
        compose(*overrides, f"objective={objective}", *OBJECTIVES[objective], "trainer.log_every_n_steps=1")
    )
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert parts.trainer.global_step == 1
    assert torch.isfinite(torch.tensor(float(parts.trainer.callback_metrics["train/loss"])))


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_on_qwen2_5_vl(compose, objective):
    _one_objective_step(compose, "qwen2_5_vl_tiny", objective)


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_on_every_family(compose, model, objective):
    _one_objective_step(compose, model, objective)
