"""model.gradient_checkpointing: the same gradients and weights as without (fp32), on every family, with the
strategies that read and write them, on every engine (tests/helpers/engines.py), for less activation memory."""

import pytest

from mllmft import api
from mllmft.memory import saved_activation_bytes
from tests.helpers.models import TINY_MODELS


def _gradients(compose, model: str, checkpointing: bool) -> tuple[dict, int]:
    parts = api.build(compose(f"model={model}", "scope=all", f"model.gradient_checkpointing={checkpointing}"))
    parts.datamodule.setup("fit")
    batch = next(iter(parts.datamodule.train_dataloader()))
    net = parts.backbone.model.train()
    loss, saved = saved_activation_bytes(lambda: net(**batch["model_inputs"], labels=batch["labels"]).loss, net)
    loss.backward()
    return {n: p.grad for n, p in net.named_parameters() if p.grad is not None}, saved


@pytest.mark.parametrize("model", TINY_MODELS)
def test_every_family_gets_the_same_gradients_keeping_fewer_activations(compose, model):
    plain, kept = _gradients(compose, model, False)
    checkpointed, kept_checkpointed = _gradients(compose, model, True)
    assert plain.keys() == checkpointed.keys()
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) <= 1e-6
    assert kept_checkpointed < 0.75 * kept, (kept_checkpointed, kept)  # the blocks' intermediates recomputed


@pytest.mark.parametrize("strategy", [["strategy=full"], ["strategy=spider"], ["strategy=lora", "scope=connector_llm"]])
def test_strategies_end_with_the_same_weights(compose, strategy):
    def fit(checkpointing: bool) -> dict:
        parts = api.build(compose(*strategy, "trainer.max_steps=3", f"model.gradient_checkpointing={checkpointing}"))
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        return {n: p.detach() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}

    plain, checkpointed = fit(False), fit(True)
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) <= 1e-6
